"""Defaults every config starts from. Every key exists here, once, so that ``--config.key=value`` overrides are
checked and the library reads keys directly, without fallbacks.

``runlocal`` (``configs/<name>.py:...,runlocal``) shrinks any config to a laptop smoke run on the same code path.
"""

import re
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

# The config-argument option that shrinks a config to a smoke run, and what it shrinks to.
RUNLOCAL = "runlocal"
RUNLOCAL_BATCH = 16  # Train and eval batch: a multiple of 8 so that it divides over 1 or 8 (simulated) devices.
RUNLOCAL_STEPS = 20
RUNLOCAL_EVAL_EXAMPLES = 64
RUNLOCAL_BASELINE_TRAIN_EXAMPLES = 256  # --mode=baseline fits on a stratified sample of this many.


def get_base_config() -> ml_collections.ConfigDict:
  """Every key with its default: configs change values, never add keys."""
  config = ml_collections.ConfigDict()
  config.name = "base"
  config.seed = 0

  config.model = _model()
  config.data = _data()

  config.batch_size = 512  # Global, over all devices and processes.
  config.eval_batch_size = 512
  config.total_steps = 0  # 0: derive from num_epochs.
  config.num_epochs = 1.0

  config.loss = ml_collections.ConfigDict({"name": "softmax_xent", "label_smoothing": 0.0})
  config.optimizer = _optimizer()
  config.schedule = _schedule()
  # The training objective by registered name: "supervised" (the loss on the labels), or "distill" (knowledge
  # distillation from the teacher of config.distill, which then needs distill.checkpoint).
  config.objective = "supervised"

  config.parallelism = "jit"  # or "pmap".
  config.mesh = ml_collections.ConfigDict({"fsdp": 1})  # Devices per parameter shard; -1: all.
  config.accum_steps = 1  # Gradient accumulation: microbatches per step, same result as the whole batch.
  config.ema_decay = 0.0  # > 0 keeps an exponential moving average of the parameters, evaluated as eval/ema_*.

  config.pretrained = ml_collections.ConfigDict(
    {
      "path": placeholder(str),  # A public .npz or an Orbax checkpoint directory.
      "dont_load": ("head/.*",),
      "head_bias_init": 0.0,
      "keep_pre_logits": False,
    }
  )

  config.eval = _eval()
  config.distill = _distill()
  config.baseline = _baseline()
  # Few-shot ridge probes and k-NN on pre-logits features every `every` steps (0: never), fitted on train_split
  # (None: data.train_split) with eval preprocessing and scored on data.eval_split.
  config.evaluators = ml_collections.ConfigDict(
    {"every": 0, "train_split": placeholder(str), "shots": (1, 5, 10, 25), "l2_reg": 2.0**10, "knn_k": 20}
  )

  # Stop when eval/<metric> has not improved for `patience` evaluations; 0 disables.
  config.early_stopping = ml_collections.ConfigDict({"metric": "accuracy", "mode": "max", "patience": 0})
  # A JAX profiler trace of `num_steps` steps from `first_step` into the workdir (TensorBoard's profile tab);
  # num_steps 0: never.
  config.profile = ml_collections.ConfigDict({"first_step": 10, "num_steps": 0})

  config.log_every = 50
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  return config


def _model() -> ml_collections.ConfigDict:
  """`config.model`: the model by registered name, and every option of every model family (None: the model's own
  default). The library passes a model only the options that are set and that it takes, and warns about the rest,
  so that `--config.model.name=resnet18` works on a config that sets ViT options."""
  return ml_collections.ConfigDict(
    {
      "name": "vit_b16",
      "classifier": placeholder(str),  # ViT: "token", "gap" or "map".
      "representation_size": placeholder(int),  # ViT: a pre-logits layer of this width before the head.
      "posemb": placeholder(str),  # ViT: "learn" or "sincos2d".
      "dropout_rate": placeholder(float),  # ViT.
      "attention_dropout_rate": placeholder(float),  # ViT.
      "stochastic_depth": placeholder(float),  # ViT: the last block's drop-path rate (linear over depth).
      "head_bias_init": placeholder(float),  # Every family: the head's initial bias.
      "width": placeholder(int),  # ResNet: channels of the stem, doubled per stage.
      "zero_init_last_bn": placeholder(bool),  # ResNet: every residual branch starts at zero.
      "dtype": "float32",  # Compute dtype; "bfloat16" keeps float32 parameters and optimizer state.
    }
  )


def _data() -> ml_collections.ConfigDict:
  """`config.data`: which dataset, its splits and preprocessing, and the input pipeline's resources."""
  data = ml_collections.ConfigDict()
  data.dataset = "vitjax_digits"
  data.data_dir = placeholder(str)  # None: TFDS's default directory.
  data.train_split = "train"
  data.eval_split = "test"
  data.pp_train = "resize(32)|to_rgb|value_range(-1, 1)"
  data.pp_eval = "resize(32)|to_rgb|value_range(-1, 1)"
  data.image_key = "image"  # TFDS feature holding the image.
  data.label_key = "label"  # TFDS feature holding the class: a ClassLabel, or a Sequence of them (multi-label).
  data.folder = placeholder(str)  # Root of a "folder"/"multilabel_folder" dataset.
  data.classes = ()  # Label ids (or class names) to keep, remapped to 0..k-1 in this order; () keeps all.
  data.strict = False  # Folder datasets: stop at the first unreadable image instead of skipping it.
  # Batch mixing; an alpha of 0 disables Mixup / CutMix. switch_prob: CutMix's share when both are on.
  data.mixup = ml_collections.ConfigDict({"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "switch_prob": 0.5, "prob": 1.0})
  # Examples, shuffled while still encoded: about 1.1 GB of host memory for ImageNet JPEGs (folder datasets
  # shuffle a whole epoch of file positions instead).
  data.shuffle_buffer = 10_000
  data.cache = False  # Keep decoded examples in host memory after the first pass (small datasets only).
  data.threads = 0  # tf.data threads on this host; 0: TF's default (one per core).
  data.prefetch = 2  # Batches kept in flight on the devices.
  return data


def _optimizer() -> ml_collections.ConfigDict:
  """`config.optimizer`: the update rule, weight decay, clipping and which parameters train at which rate."""
  return ml_collections.ConfigDict(
    {
      "name": "sgd",
      "learning_rate": 0.03,
      "momentum": 0.9,
      "nesterov": False,
      "b1": 0.9,
      "b2": 0.999,
      "eps": placeholder(float),  # None: the optimizer's own, 1e-6 for lamb, 1e-8 for adam / adamw.
      "weight_decay": 0.0,
      "weight_decay_mode": "decoupled",  # or "l2": added to the gradient, as L2 in the loss.
      "grad_clip_norm": 1.0,
      "layerwise_decay": 1.0,  # < 1: learning rate times decay**(depth from the top), per ViT block / ResNet stage.
      "freeze": placeholder(str),  # Regex over parameter paths: no update, no state.
    }
  )


def _schedule() -> ml_collections.ConfigDict:
  """`config.schedule`: the learning rate over the steps, as a multiple of optimizer.learning_rate."""
  # Linear warmup from 0, then the decay of `name`: "cosine", "linear" or "constant" (to end_value), "rsqrt" (over
  # `timescale` steps) or "step" (times decay_factor at each of `boundaries`, fractions of the total steps).
  return ml_collections.ConfigDict(
    {
      "name": "cosine",
      "warmup_steps": 0,
      "end_value": 0.0,
      "timescale": 10_000,
      "boundaries": (0.3, 0.6, 0.9),
      "decay_factor": 0.1,
    }
  )


def _eval() -> ml_collections.ConfigDict:
  """`config.eval`: what `--mode=eval` evaluates and how."""
  # checkpoints: workdirs, step folders or .npz files, several = an ensemble averaging logits;
  # () evaluates --workdir. tta: "none", "flip", "five_crop" or "ten_crop" (crops of crop_size, and mirrors).
  return ml_collections.ConfigDict(
    {
      "checkpoints": (),
      "tta": "none",
      "crop_size": 0,
      "use_ema": False,
      "multilabel_threshold": 0.5,
      "calibration_bins": 15,
    }
  )


def _distill() -> ml_collections.ConfigDict:
  """`config.distill`: the teacher and the loss mix of the "distill" objective (knowledge distillation)."""
  # The teacher (model as config.model, checkpoint a run or an .npz with its head):
  # kind "soft" (KL at temperature, times T^2) or "hard" (teacher's top class, DeiT); alpha weighs it against the
  # run's own loss.
  return ml_collections.ConfigDict(
    {
      "model": ml_collections.ConfigDict({"name": placeholder(str)}),
      "checkpoint": placeholder(str),
      "kind": "soft",
      "alpha": 0.5,
      "temperature": 1.0,
    }
  )


def _baseline() -> ml_collections.ConfigDict:
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


def split_runlocal(arg: str | None) -> tuple[str, bool]:
  """(the config argument without its `runlocal` option, whether it had one): any config takes `runlocal`, alone or
  after its other options (``cifar10,freeze6,runlocal``)."""
  options = (arg or "").split(",")
  rest = [option for option in options if option != RUNLOCAL]
  return ",".join(rest), len(rest) < len(options)


def first_examples(split: str, count: int) -> str:
  """The first ``count`` examples of a plain TFDS split name (``test`` -> ``test[:64]``); a split that is already a
  slice or a union is kept as it is (TFDS cannot slice it again)."""
  return f"{split}[:{count}]" if re.fullmatch(r"\w+", split) else split


def runlocal(config: ml_collections.ConfigDict, updates: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """Shrinks ``config`` in place to a smoke run that a laptop finishes in a minute, on the same code path (data,
  model family, optimizer and schedule stay); ``updates`` ({"model.name": ...}) shrink what only the caller knows."""
  config.name = f"{config.name}_{RUNLOCAL}"
  config.batch_size = config.eval_batch_size = RUNLOCAL_BATCH
  config.total_steps = RUNLOCAL_STEPS
  config.schedule.warmup_steps = min(config.schedule.warmup_steps, RUNLOCAL_STEPS // 10)
  config.log_every, config.eval_every, config.checkpoint_every = 5, 10, 10
  config.keep_checkpoints = 1
  config.evaluators.every = 0  # Feature evaluators off: they fit probes on the whole training split.
  config.data.eval_split = first_examples(config.data.eval_split, RUNLOCAL_EVAL_EXAMPLES)
  config.data.shuffle_buffer = 256
  config.baseline.max_train_examples = min(config.baseline.max_train_examples, RUNLOCAL_BASELINE_TRAIN_EXAMPLES)
  config.update_from_flattened_dict(dict(updates or {}))
  return config
