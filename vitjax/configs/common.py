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
from vitjax.configs import sections
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

  config.pretrained = _pretrained()

  config.eval = _eval()
  config.distill = _distill()
  config.adapt = _adapt()
  config.ssl = _ssl()
  config.baseline = sections.baseline()
  config.adversarial = sections.adversarial()
  config.robustness = sections.robustness()
  config.explain = sections.explain()
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
  config.distributed = _distributed()
  return config


def _distributed() -> ml_collections.ConfigDict:
  """`config.distributed`: how a multi-process run (jax.distributed) finds a lost or failed process."""
  return ml_collections.ConfigDict(
    {
      # Seconds without a heartbeat after which a process counts as lost: every other one logs one line naming it
      # and exits with status 75 (relaunch to resume); the coordination service's own timeout is twice this.
      "heartbeat_timeout": 60,
      "init_timeout": 300,  # Seconds every process waits for all the others to join at the start.
    }
  )


def _pretrained() -> ml_collections.ConfigDict:
  """`config.pretrained`: weights a run starts from, and what of them it keeps."""
  return ml_collections.ConfigDict(
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
  # NaFlex: maximum patch-sequence lengths, written {seq_len} in pp_train and pp_eval (vitjax/data/seqlens.py);
  # training cycles through them batch by batch, evaluation uses the longest unless an evaluator's seq_len says.
  data.seq_lens = ()
  data.image_key = "image"  # TFDS feature holding the image.
  data.label_key = "label"  # TFDS feature holding the class: a ClassLabel, or a Sequence of them (multi-label).
  data.folder = placeholder(str)  # Root of a "folder"/"multilabel_folder" dataset.
  data.classes = ()  # Label ids (or class names) to keep, remapped to 0..k-1 in this order; () keeps all.
  # Folder datasets: stop at the first unreadable image (naming it and the host) instead of replacing it with the
  # next readable one; replaced ones are logged and counted in the train metric input_skipped.
  data.strict = False
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
  # The teacher (model as config.model, checkpoint a run or an .npz with its head; several runs separated by commas
  # are an ensemble teacher, its members' logits averaged):
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
