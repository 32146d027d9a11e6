"""A trained model in use: `classifier.Classifier` (probabilities, top-k names and features of image files and
arrays; also `vitjax.Classifier`), `predictions` (one CSV row per file), `exporters` (SavedModel, TFLite, ONNX).

Nothing is imported here, so that `formats` stays light for the commands that check their flags first."""
