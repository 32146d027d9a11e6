"""Classical baselines: hand-crafted features (HOG, LBP, colour histograms, Gabor energy, SIFT bag of words, raw
pixels) with scikit-learn classifiers, on exactly the data and splits the deep models read, reported the same way.

``run_baseline(config, workdir)`` is ``--mode=baseline``; ``predict(workdir_or_model, images)`` names the classes
of new images with the best pair it saved.
"""

from vitjax.classical.baseline import run_baseline
from vitjax.classical.model import load, predict

__all__ = ["load", "predict", "run_baseline"]
