"""The sections of the base config that belong to one mode each: robust training, --mode=robustness,
--mode=explain and --mode=baseline (vitjax/configs/common.py puts them under config.<section>)."""

import ml_collections
from ml_collections.config_dict import placeholder


def adversarial() -> ml_collections.ConfigDict:
  """`config.adversarial`: the perturbations of the robust training objectives, in pixel levels (1/255 of the
  range) on the images of data.pp_train, whatever its final normalisation."""
  # epsilon: the L-inf budget of "pgd_at", "trades" and "fast_fgsm" (which steps 1.25 epsilon once); steps and
  # step_size: PGD's ascent ("pgd_at", and "trades" maximising the KL); trades_beta: TRADES' weight of the KL
  # term; noise_stddev: the standard deviation of "gaussian_noise".
  return ml_collections.ConfigDict(
    {"epsilon": 8.0, "steps": 7, "step_size": 2.0, "trades_beta": 6.0, "noise_stddev": 16.0}
  )


def robustness() -> ml_collections.ConfigDict:
  """`config.robustness`: what `--mode=robustness` measures on data.eval_split (robustness.json)."""
  robustness = ml_collections.ConfigDict()
  # Attacks ("fgsm", "pgd_linf", "pgd_l2") at radii in pixel levels (1/255 of the range; for pgd_l2 the L2 norm
  # of the pixel change); PGD takes `steps` steps of relative_step_size * epsilon from a random start.
  robustness.attacks = ("fgsm", "pgd_linf", "pgd_l2")
  robustness.epsilons = (1.0, 2.0, 4.0, 8.0, 16.0)
  robustness.l2_epsilons = (32.0, 64.0, 128.0, 256.0)
  robustness.steps = 10
  robustness.relative_step_size = 0.25
  robustness.random_start = True
  # Common corruptions (ImageNet-C kinds that apply to any image) at severities 1..5 on pp_eval's pixels; ()
  # skips them. reference: a workdir whose robustness.json holds the same corruptions, for mean corruption error.
  robustness.corruptions = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "gaussian_blur",
    "defocus_blur",
    "motion_blur",
    "brightness",
    "contrast",
    "saturate",
    "jpeg",
    "pixelate",
    "grayscale",
  )
  robustness.reference = placeholder(str)
  # Held-out labelled examples for temperature scaling and the label-shift confusion matrix; None: a random
  # `calibration_fraction` of data.eval_split, the rest of it scoring them (the run never trained on either).
  robustness.calibration_split = placeholder(str)
  robustness.calibration_fraction = 0.2
  # Label shift: the eval split resampled (with replacement, `num_examples`, 0: its size) to a class prior
  # "dirichlet" (drawn with concentration `alpha`), "tweak_one" (class 0 gets `rho`, the rest share the
  # remainder) or "uniform"; `trials` draws, averaged.
  robustness.label_shift = ml_collections.ConfigDict(
    {"prior": "dirichlet", "alpha": 1.0, "rho": 0.5, "num_examples": 0, "trials": 10}
  )
  # MC dropout: `passes` stochastic forward passes; dropout_rate None: the run's own (0 gives no spread).
  robustness.mc_dropout = ml_collections.ConfigDict({"passes": 20, "dropout_rate": placeholder(float)})
  robustness.max_batches = 0  # > 0: only the first this many eval batches (a quick look at a large split).
  return robustness


def explain() -> ml_collections.ConfigDict:
  """`config.explain`: what `--mode=explain` attributes, on which images, with which settings (explain.json and
  PNG grids under workdir/explain)."""
  explain = ml_collections.ConfigDict()
  # gradients, smoothgrad, integrated_gradients, grad_cam, attention_rollout, attention_last, occlusion, lime,
  # class_model; those a model cannot give (attention maps of a ResNet) are skipped with a warning.
  explain.methods = (
    "gradients",
    "smoothgrad",
    "integrated_gradients",
    "grad_cam",
    "attention_rollout",
    "attention_last",
    "occlusion",
    "lime",
    "class_model",
  )
  explain.files = ()  # Image files, folders or globs to explain; () takes the first num_images of data.eval_split.
  explain.num_images = 8
  # Grad-CAM's module path ("layer4", "Transformer/encoderblock_3"); None: the last conv stage with more than one
  # position (ResNet, BiT, hybrid), else the last transformer block.
  explain.layer = placeholder(str)
  explain.batch_size = 32  # Images per forward/backward pass inside a method (SmoothGrad, IG, occlusion, LIME).
  # Gaussian blur of the blurred IG baseline and of the insertion curve's start, as a fraction of the shorter side.
  explain.blur_sigma = 0.1
  explain.smoothgrad = ml_collections.ConfigDict({"samples": 32, "noise": 0.15})  # noise: std / pixel range.
  # Trapezoid steps along the path from each baseline ("black", "blur"); 128 keeps completeness within 1%.
  explain.integrated_gradients = ml_collections.ConfigDict({"steps": 128, "baselines": ("black", "blur")})
  # Square window and stride as fractions of the shorter side; covered pixels take the value `fill` (0-255).
  explain.occlusion = ml_collections.ConfigDict({"window": 0.25, "stride": 0.125, "fill": 0.0})
  # Random on/off samples of about `segments` SLIC superpixels; LIME's kernel width on the cosine distance; the
  # ridge penalty of the weighted linear fit.
  explain.lime = ml_collections.ConfigDict(
    {"samples": 512, "segments": 50, "compactness": 10.0, "kernel_width": 0.25, "ridge": 1.0}
  )
  explain.faithfulness = ml_collections.ConfigDict({"steps": 32})  # Points of the deletion and insertion curves.
  # Class-model images (class_model): class names or indices, or "LAYER:CHANNEL" for a channel of a module;
  # (): the classes predicted for the explained images. Gradient ascent of `steps` steps of `learning_rate`
  # pixels, the image rolled by up to `jitter` pixels each step and blurred by `blur_sigma` pixels every
  # `blur_every` steps.
  explain.visualize_class = ()
  explain.visualize = ml_collections.ConfigDict(
    {"steps": 256, "learning_rate": 2.0, "jitter": 2, "blur_sigma": 0.5, "blur_every": 4}
  )
  return explain


def baseline() -> ml_collections.ConfigDict:
  """`config.baseline`: `--mode=baseline`, hand-crafted features with scikit-learn classifiers on config.data's
  train and eval splits, every feature x classifier pair fitted and reported."""
  baseline = ml_collections.ConfigDict()
  # Features by name, several joined with "+" ("hog+lbp"): hog, lbp, color_hist, gabor, sift_bow, raw_pixels.
  baseline.features = ("hog",)
  # svm_linear, svm_rbf, random_forest, knn, naive_bayes (Gaussian), logistic.
  baseline.classifiers = ("svm_rbf",)
  baseline.image_size = 32  # Side of the square images the features see: pp_eval's output resized on the host.
  # Above this many training examples, a stratified sample of this size is fitted on (memory, SVM time); reading
  # holds at most 3x this many images (uint8, image_size) at once.
  baseline.max_train_examples = 20_000
  baseline.batch_size = 256  # Images read, resized and featurised at a time.
  baseline.n_jobs = 1  # Cores for random forest, k-NN, the search and scikit-learn's OpenMP/BLAS threads; -1: all.
  # GridSearchCV of each classifier over `grid` by stratified `cv_folds`-fold CV on the training sample only.
  baseline.search = False
  baseline.cv_folds = 3
  baseline.hog = ml_collections.ConfigDict({"orientations": 9, "pixels_per_cell": 8, "cells_per_block": 2})
  # Uniform LBP with 8 * radius neighbours per radius; one histogram per radius and cell of a grid x grid split.
  baseline.lbp = ml_collections.ConfigDict({"radii": (1, 2, 3), "grid": 1})
  # space "hsv" or "rgb"; mode "joint" (bins**3 cells) or "per_channel" (3 * bins).
  baseline.color_hist = ml_collections.ConfigDict({"space": "hsv", "mode": "joint", "bins": 8})
  # Mean and std of the energy of each zero-mean Gabor filter (frequencies in cycles/pixel x orientations) per
  # cell of a grid x grid split.
  baseline.gabor = ml_collections.ConfigDict({"frequencies": (0.1, 0.2, 0.3), "orientations": 4, "grid": 1})
  # mode "dense" (a keypoint of diameter `size` every `step` pixels) or "keypoint" (OpenCV's detector); a k-means
  # vocabulary of `vocabulary_size` words fitted on at most `max_descriptors` descriptors of training images.
  baseline.sift_bow = ml_collections.ConfigDict(
    {"mode": "dense", "step": 4, "size": 8, "vocabulary_size": 100, "max_descriptors": 100_000, "tfidf": False}
  )
  baseline.raw_pixels = ml_collections.ConfigDict({"grayscale": False})  # True: the luminance only.
  # Constructor arguments of each classifier (scikit-learn's names), and the values the search tries.
  baseline.params = ml_collections.ConfigDict(
    {
      "svm_linear": {"C": 1.0},
      "svm_rbf": {"C": 10.0, "gamma": "scale"},
      "random_forest": {"n_estimators": 300, "max_features": "sqrt"},
      "knn": {"n_neighbors": 5, "weights": "distance"},
      "naive_bayes": {"var_smoothing": 1e-9},
      "logistic": {"C": 1.0, "max_iter": 2000},
    }
  )
  baseline.grid = ml_collections.ConfigDict(
    {
      "svm_linear": {"C": (0.01, 0.1, 1.0)},
      "svm_rbf": {"C": (1.0, 10.0, 100.0)},
      "random_forest": {"max_features": ("sqrt", "log2")},
      "knn": {"n_neighbors": (1, 5, 15)},
      "naive_bayes": {"var_smoothing": (1e-9, 1e-6, 1e-3)},
      "logistic": {"C": (0.1, 1.0, 10.0)},
    }
  )
  return baseline
