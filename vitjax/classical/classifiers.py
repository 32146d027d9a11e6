"""The classifiers of the baselines, each behind a `StandardScaler` in a scikit-learn `Pipeline`, their optional
hyper-parameter search by cross-validation, and their scores as report-ready logits."""

import ml_collections
import numpy as np
from sklearn import ensemble, linear_model, model_selection, naive_bayes, neighbors, pipeline, preprocessing, svm

from vitjax.errors import ConfigError

# Both SVMs are libsvm's (one-vs-one, kernel cache): on correlated features such as upscaled pixels a linear
# kernel there converges in a second where liblinear's LinearSVC takes minutes.
CLASSIFIERS: dict[str, type] = {
  "svm_linear": svm.SVC,
  "svm_rbf": svm.SVC,
  "random_forest": ensemble.RandomForestClassifier,
  "knn": neighbors.KNeighborsClassifier,
  "naive_bayes": naive_bayes.GaussianNB,
  "logistic": linear_model.LogisticRegression,
}
# The score of a class the classifier never saw in training: far below any log-probability or SVM margin.
UNSEEN_CLASS_SCORE = -1e4
_PROBABILITY_FLOOR = 1e-12  # log(0) would make the report's loss infinite.


def check(name: str) -> None:
  if name not in CLASSIFIERS:
    raise ConfigError(f"Unknown config.baseline.classifiers entry {name!r}; choose one of: {', '.join(CLASSIFIERS)}.")


def from_config(name: str, options: ml_collections.ConfigDict, *, seed: int) -> pipeline.Pipeline:
  """Standardisation then the classifier `name` with `config.baseline.params.<name>`; seeded where it draws
  random numbers, on `n_jobs` cores where it can use several, and SVMs break ties by their decision values so
  that `predict` is the argmax of the reported scores."""
  check(name)
  fixed = {
    "svm_linear": {"kernel": "linear", "random_state": seed, "break_ties": True},
    "svm_rbf": {"random_state": seed, "break_ties": True},
    "random_forest": {"random_state": seed, "n_jobs": options.n_jobs},
    "knn": {"n_jobs": options.n_jobs},
    "naive_bayes": {},
    "logistic": {"random_state": seed},
  }
  kwargs = {**options.params[name].to_dict(), **fixed[name]}
  return pipeline.Pipeline([("scale", preprocessing.StandardScaler()), ("classifier", CLASSIFIERS[name](**kwargs))])


def fit(
  head: pipeline.Pipeline,
  name: str,
  features: np.ndarray,
  labels: np.ndarray,
  options: ml_collections.ConfigDict,
  *,
  seed: int,
) -> tuple[pipeline.Pipeline, dict | None]:
  """(the fitted `head`, the chosen hyper-parameters or None). With `options.search`, GridSearchCV over
  `options.grid.<name>` by stratified k-fold on these (training) features, refitted on all of them. The features
  (a SIFT vocabulary too) are fitted on the whole training sample first: the search tunes the classifier only."""
  grid = options.grid[name].to_dict() if options.search else {}
  if not grid:
    return head.fit(features, labels), None
  folds = model_selection.StratifiedKFold(options.cv_folds, shuffle=True, random_state=seed)
  search = model_selection.GridSearchCV(
    head, {f"classifier__{key}": list(values) for key, values in grid.items()}, cv=folds, n_jobs=options.n_jobs
  )
  search.fit(features, labels)
  return search.best_estimator_, {key.split("__", 1)[1]: value for key, value in search.best_params_.items()}


def scores(head: pipeline.Pipeline, features: np.ndarray, *, num_classes: int) -> np.ndarray:
  """(N, num_classes) logits for the report: log-probabilities where the classifier gives probabilities, else
  decision values (SVMs); the argmax is the classifier's prediction."""
  classifier = head[-1]
  if hasattr(classifier, "predict_proba"):
    raw = np.log(np.clip(head.predict_proba(features), _PROBABILITY_FLOOR, None))
  else:
    raw = head.decision_function(features)
    if raw.ndim == 1:  # Two classes: one margin, positive for classes_[1].
      raw = np.stack([-raw, raw], axis=1) / 2
  out = np.full((len(features), num_classes), UNSEEN_CLASS_SCORE)
  out[:, classifier.classes_] = raw
  return out
