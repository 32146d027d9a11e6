"""Defaults every config starts from. Every key exists here, once, so that ``--config.key=value`` overrides are
checked and the library reads keys directly, without fallbacks.

``runlocal`` (``configs/<name>.py:...,runlocal``) shrinks any config to a laptop smoke run on the same code path.
"""

import re
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from vitjax import models
from vitjax.evaluate import registry

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
  # distillation from the teacher of config.distill, which then needs distill.checkpoint); robust training:
  # "pgd_at", "trades", "fast_fgsm" (adversarial examples of config.adversarial) or "gaussian_noise"; domain
  # adaptation with config.data.target: "dann", "source_only" (config.adapt); self-supervised: "rotation", "simclr",
  # "mae" (config.ssl).
  config.objective = "supervised"

  config.parallelism = "jit"  # or "pmap".
  config.mesh = ml_collections.ConfigDict({"fsdp": 1})  # Devices per parameter shard; -1: all.
  config.accum_steps = 1  # Gradient accumulation: microbatches per step, same result as the whole batch.
  config.ema_decay = 0.0  # > 0 keeps an exponential moving average of the parameters, evaluated as eval/ema_*.

  config.pretrained = ml_collections.ConfigDict(
    {
      # A public .npz, a timm .safetensors, an Orbax checkpoint directory, or hf-hub:ORG/NAME (a timm Hub repo,
      # which then names config.model).
      "path": placeholder(str),
      "dont_load": ("head/.*",),
      "head_bias_init": 0.0,
      "keep_pre_logits": False,
      # hf-hub: paths: "hub" trains and evaluates at the repo's input size and normalisation (timm's transforms);
      # "config" keeps data.pp_train and data.pp_eval as they are.
      "preprocessing": "hub",
    }
  )

  config.eval = _eval()
  config.distill = _distill()
  config.adapt = _adapt()
  config.ssl = _ssl()
  config.baseline = _baseline()
  config.adversarial = _adversarial()
  config.robustness = _robustness()
  config.explain = _explain()
  config.evals = _evals()

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
  """`config.model`: the model by registered name, and every option that a model family declares (None: the model's
  own default; `models.option_docs()` says what each does). The library passes a model only the options that are set
  and that it takes, and warns about the rest, so that `--config.model.name=resnet18` works on a config that sets
  ViT options."""
  options = {key: placeholder(o.type) if o.default is None else o.default for key, o in models.options().items()}
  return ml_collections.ConfigDict({"name": "vit_b16", **options})


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
  # A second, unlabelled source streamed beside the first as batch["target_image"] (domain adaptation,
  # self-supervision): a TFDS or embedded name (e.g. the synthetic shifts vitjax_digits_inverted, _rotated,
  # _noised, _colour) or "folder" reading target_folder; None: no second stream. Its labels, if any, never train:
  # they only score target_eval_split ("" : none), reported as eval/target_*.
  data.target = placeholder(str)
  data.target_folder = placeholder(str)
  data.target_split = "train"
  data.target_eval_split = "test"
  data.target_pp = "resize(32)|to_rgb|value_range(-1, 1)"
  data.target_pp_eval = "resize(32)|to_rgb|value_range(-1, 1)"
  return data


def _evals() -> ml_collections.ConfigDict:
  """`config.evals`: the evaluators by name, each with its type (vitjax/evaluate/<type>.py: classification, fewshot,
  knn) and every option of it (registry.config fills in the defaults, so --config.evals.<name>.<option> works). Each
  runs every `every` steps (None: eval_every) and at the end; configs add entries. "val" is the run's accuracy and
  loss (results.json, early stopping)."""
  return ml_collections.ConfigDict({"val": registry.config("classification")})


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
  # Warmup: `warmup_fraction` of the run when set (it scales with num_epochs), else `warmup_steps`, cut to
  # `max_warmup_fraction` of the run with a warning so that a shortened run still peaks and decays.
  return ml_collections.ConfigDict(
    {
      "name": "cosine",
      "warmup_steps": 0,
      "warmup_fraction": 0.0,
      "max_warmup_fraction": 0.25,
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


def _adversarial() -> ml_collections.ConfigDict:
  """`config.adversarial`: the perturbations of the robust training objectives, in pixel levels (1/255 of the
  range) on the images of data.pp_train, whatever its final normalisation."""
  # epsilon: the L-inf budget of "pgd_at", "trades" and "fast_fgsm" (which steps 1.25 epsilon once); steps and
  # step_size: PGD's ascent ("pgd_at", and "trades" maximising the KL); trades_beta: TRADES' weight of the KL
  # term; noise_stddev: the standard deviation of "gaussian_noise".
  return ml_collections.ConfigDict(
    {"epsilon": 8.0, "steps": 7, "step_size": 2.0, "trades_beta": 6.0, "noise_stddev": 16.0}
  )


def _robustness() -> ml_collections.ConfigDict:
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


def _explain() -> ml_collections.ConfigDict:
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


def _adapt() -> ml_collections.ConfigDict:
  """`config.adapt`: the domain-adaptation objectives "dann" and "source_only" (both need config.data.target)."""
  # dann: a domain classifier MLP (hidden widths) on the pre-logits behind a gradient reversal layer whose strength
  # rises as 2 / (1 + exp(-gamma p)) - 1 over training progress p; its loss weighs domain_weight against the
  # source loss.
  return ml_collections.ConfigDict({"hidden": (256, 256), "gamma": 10.0, "domain_weight": 1.0})


def _ssl() -> ml_collections.ConfigDict:
  """`config.ssl`: the self-supervised objectives "rotation", "simclr" and "mae" (labels unused)."""
  return ml_collections.ConfigDict(
    {
      "use_target": True,  # Also learn from batch["target_image"] when config.data.target is set.
      "hidden": (256,),  # Hidden widths of the rotation head and of SimCLR's projection MLP.
      "projection_dim": 64,  # SimCLR: width of the projection the NT-Xent loss compares.
      "temperature": 0.2,  # SimCLR: NT-Xent temperature.
      "crop_min_scale": 0.3,  # SimCLR views: smallest crop area (fraction), then flip and colour jitter.
      "jitter": 0.4,  # SimCLR views: brightness / contrast / saturation change, relative.
      "mask_ratio": 0.75,  # MAE: fraction of patches masked, per example.
      "decoder_width": 64,  # MAE: the light decoder's width, depth (transformer blocks) and heads.
      "decoder_depth": 2,
      "decoder_heads": 4,
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
  for name in [name for name, entry in config.evals.items() if entry.type != "classification"]:
    del config.evals[name]  # Feature probes read the whole training split.
  config.data.eval_split = first_examples(config.data.eval_split, RUNLOCAL_EVAL_EXAMPLES)
  config.data.shuffle_buffer = 256
  config.baseline.max_train_examples = min(config.baseline.max_train_examples, RUNLOCAL_BASELINE_TRAIN_EXAMPLES)
  config.update_from_flattened_dict(dict(updates or {}))
  return config
