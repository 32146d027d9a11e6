"""Defaults every config starts from. Every key exists here so that ``--config.key=value`` overrides are checked."""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "base"
  config.seed = 0

  config.model = ml_collections.ConfigDict({"name": "vit_b16"})

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "vitjax_digits"
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS's default directory.
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.pp_train = "resize(32)|to_rgb|value_range(-1, 1)"
  config.data.pp_eval = "resize(32)|to_rgb|value_range(-1, 1)"
  config.data.image_key = "image"  # TFDS feature holding the image.
  config.data.label_key = "label"  # TFDS feature holding the class: a ClassLabel, or a Sequence of them (multi-label).
  config.data.folder = ml_collections.config_dict.placeholder(str)  # Root of a "folder"/"multilabel_folder" dataset.
  config.data.classes = ()  # Label ids (or class names) to keep, remapped to 0..k-1 in this order; () keeps all.
  config.data.strict = False  # Folder datasets: stop at the first unreadable image instead of skipping it.
  # Batch mixing; an alpha of 0 disables Mixup / CutMix. switch_prob: CutMix's share when both are on.
  config.data.mixup = ml_collections.ConfigDict(
    {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "switch_prob": 0.5, "prob": 1.0}
  )
  # Examples, shuffled while still encoded: about 1.1 GB of host memory for ImageNet JPEGs (folder datasets
  # shuffle a whole epoch of file positions instead).
  config.data.shuffle_buffer = 10_000
  config.data.cache = False  # Keep decoded examples in host memory after the first pass (small datasets only).
  config.data.threads = 0  # tf.data threads on this host; 0: TF's default (one per core).
  config.data.prefetch = 2  # Batches kept in flight on the devices.

  config.batch_size = 512  # Global, over all devices and processes.
  config.eval_batch_size = 512
  config.total_steps = 0  # 0: derive from num_epochs.
  config.num_epochs = 1.0

  config.loss = ml_collections.ConfigDict({"name": "softmax_xent", "label_smoothing": 0.0})
  config.optimizer = ml_collections.ConfigDict(
    {
      "name": "sgd",
      "learning_rate": 0.03,
      "momentum": 0.9,
      "nesterov": False,
      "b1": 0.9,
      "b2": 0.999,
      "weight_decay": 0.0,
      "weight_decay_mode": "decoupled",  # or "l2": added to the gradient, as L2 in the loss.
      "grad_clip_norm": 1.0,
      "layerwise_decay": 1.0,  # < 1: learning rate times decay**(depth from the top), per ViT block / ResNet stage.
      "freeze": ml_collections.config_dict.placeholder(str),  # Regex over parameter paths: no update, no state.
    }
  )
  config.schedule = ml_collections.ConfigDict({"name": "cosine", "warmup_steps": 0, "end_value": 0.0})

  config.parallelism = "jit"  # or "pmap".
  config.mesh = ml_collections.ConfigDict({"fsdp": 1})  # Devices per parameter shard; -1: all.
  config.accum_steps = 1  # Gradient accumulation: microbatches per step, same result as the whole batch.
  config.ema_decay = 0.0  # > 0 keeps an exponential moving average of the parameters, evaluated as eval/ema_*.

  config.pretrained = ml_collections.ConfigDict(
    {
      "path": ml_collections.config_dict.placeholder(str),  # A public .npz or an Orbax checkpoint directory.
      "dont_load": ("head/.*",),
      "head_bias_init": 0.0,
      "keep_pre_logits": False,
    }
  )

  # --mode=eval. checkpoints: workdirs, step folders or .npz files, several = an ensemble averaging logits;
  # () evaluates --workdir. tta: "none", "flip", "five_crop" or "ten_crop" (crops of crop_size, and mirrors).
  config.eval = ml_collections.ConfigDict(
    {
      "checkpoints": (),
      "tta": "none",
      "crop_size": 0,
      "use_ema": False,
      "multilabel_threshold": 0.5,
      "calibration_bins": 15,
    }
  )
  # Knowledge distillation from a teacher (model as config.model, checkpoint a run or an .npz with its head):
  # kind "soft" (KL at temperature, times T^2) or "hard" (teacher's top class, DeiT); alpha weighs it against the
  # run's own loss.
  config.distill = ml_collections.ConfigDict(
    {
      "model": ml_collections.ConfigDict({"name": ml_collections.config_dict.placeholder(str)}),
      "checkpoint": ml_collections.config_dict.placeholder(str),
      "kind": "soft",
      "alpha": 0.5,
      "temperature": 1.0,
    }
  )
  # Few-shot ridge probes and k-NN on pre-logits features every `every` steps (0: never), fitted on train_split
  # (None: data.train_split) with eval preprocessing and scored on data.eval_split.
  config.evaluators = ml_collections.ConfigDict(
    {
      "every": 0,
      "train_split": ml_collections.config_dict.placeholder(str),
      "shots": (1, 5, 10, 25),
      "l2_reg": 2.0**10,
      "knn_k": 20,
    }
  )

  # Stop when eval/<metric> has not improved for `patience` evaluations; 0 disables.
  config.early_stopping = ml_collections.ConfigDict({"metric": "accuracy", "mode": "max", "patience": 0})

  config.log_every = 50
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  return config
