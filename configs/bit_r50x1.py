"""BiT-R50x1 fine-tuning with the BiT-HyperRule (Kolesnikov et al. 2020, "Big Transfer", section 3.3).

    python -m vitjax.main --config=configs/bit_r50x1.py:cifar10 --workdir=/tmp/bit_r50x1_cifar10 \
        --config.pretrained.path=/path/to/BiT-M-R50x1.npz \
        --config.data.data_dir=/path/to/tensorflow_datasets

HyperRule: SGD momentum 0.9, learning rate 0.003, batch 512, no weight decay. Schedule by training-set size:
under 20k examples 500 steps (100 warmup, then /10 at steps 200, 300, 400), under 500k 10k steps (500 warmup,
/10 at 3k, 6k, 9k), else 20k steps (500 warmup, /10 at 6k, 12k, 18k). Mixup (alpha 0.1) from 20k examples.
Images of at most 96x96 pixels are resized to 160 and randomly cropped to 128, larger ones resized to 512 and
cropped to 480; random horizontal flip; evaluation resizes to the crop size. Inputs in [-1, 1].

The public BiT `.npz` (TF names, `resnet/...`) loads onto `bit_r50x1` with its head replaced by a zero one.
A strategy may follow the dataset (vitjax/configs/finetune.py), e.g. `cifar10,feature_extraction` or `cifar10,freeze2`
(root and stages 1-2 frozen).

Smoke run on a laptop, same code path (32-pixel crops, 20 steps, the first 64 test images; no checkpoint needed):

    python -m vitjax.main --config=configs/bit_r50x1.py:cifar10,runlocal --workdir=/tmp/bit_r50x1_runlocal
"""

from vitjax.configs import finetune

# dataset -> (train split, eval split, training examples, small images (<= 96x96)).
PRESETS = {
  "cifar10": ("train[:98%]", "test", 49_000, True),
  "cifar100": ("train[:98%]", "test", 49_000, True),
  "imagenet2012": ("train[:99%]", "validation", 1_268_355, False),
  "oxford_iiit_pet": ("train[:90%]", "test", 3_312, False),
  "oxford_flowers102": ("train[:90%]", "test", 918, False),
}

RUNLOCAL_MODEL = "bit_r50x1"  # runlocal's model: this one is already the smallest BiT.


def hyperrule_schedule(num_examples: int) -> tuple[int, int, tuple[float, ...]]:
  """(total steps, warmup steps, decay points as fractions of the total) of BiT's `get_schedule`."""
  if num_examples < 20_000:
    return 500, 100, (0.4, 0.6, 0.8)
  if num_examples < 500_000:
    return 10_000, 500, (0.3, 0.6, 0.9)
  return 20_000, 500, (0.3, 0.6, 0.9)


def get_config(arg: str | None = "cifar10"):
  """The BiT-HyperRule recipe for `arg` = dataset[,strategy][,runlocal] (default cifar10, full)."""
  dataset, strategy, local = finetune.parse_arg(arg, PRESETS, model="bit_r50x1")
  train_split, eval_split, num_examples, small_images = PRESETS[dataset]
  steps, warmup, boundaries = hyperrule_schedule(num_examples)
  resize, crop = (160, 128) if small_images else (512, 480)
  config = finetune.base_config("bit_r50x1", dataset, strategy, train_split=train_split, eval_split=eval_split)
  config.data.pp_train = f"resize({resize})|random_crop({crop})|flip_lr|value_range(-1, 1)"
  config.data.pp_eval = f"resize({crop})|value_range(-1, 1)"
  config.data.mixup.mixup_alpha = 0.1 if num_examples >= 20_000 else 0.0
  config.batch_size = 512
  config.eval_batch_size = 512
  config.total_steps = steps
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.003
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 0.0
  config.schedule.name = "step"
  config.schedule.warmup_steps = warmup
  config.schedule.boundaries = boundaries
  config.schedule.decay_factor = 0.1
  config.pretrained.dont_load = ("head/.*",)
  config.pretrained.head_bias_init = 0.0
  finetune.apply(config, strategy, stem=r"root_block/", block="block{}/", first_block=1)
  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  return finetune.runlocal(config, model=RUNLOCAL_MODEL) if local else config
