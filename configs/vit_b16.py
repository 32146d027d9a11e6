"""ViT-B/16 fine-tuning with the published recipe of the public ViT code (ImageNet-21k upstream, 384px).

    python -m vitjax.main --config=configs/vit_b16.py:cifar10 --workdir=/tmp/vit_b16_cifar10 \
        --config.pretrained.path=/path/to/imagenet21k/ViT-B_16.npz \
        --config.data.data_dir=/path/to/tensorflow_datasets

Recipe: SGD momentum 0.9, global-norm clipping 1.0, batch 512, 500 warmup steps then cosine, resize to 448 and
random-crop 384 (+ flip) for training, resize to 384 for evaluation, images in [-1, 1]. Published accuracies
(ImageNet-21k upstream): CIFAR-10 99.0%, CIFAR-100 92.1%, ImageNet 84.5%; CIFAR-10 98.6% after 500 steps.
Presets: cifar10, cifar100, imagenet2012, oxford_iiit_pet, oxford_flowers102.

Transfer: the upstream file's 224px position embeddings are resized to the 384px grid (24x24) on load, its
ImageNet-21k head is replaced by a zero one, and its `pre_logits` layer is dropped (the public fine-tunes train
without a representation layer; set model.representation_size and pretrained.keep_pre_logits to keep it).
A strategy may follow the dataset (vitjax/configs/finetune.py): `cifar10,feature_extraction`, `cifar10,freeze6`,
`cifar10,layer_decay0.75`; the default, `full`, is the published recipe.

Smoke run on a laptop, same code path (vit_ti16, 32-pixel crops, 20 steps, the first 64 test images; no checkpoint
needed), optionally after a strategy (`cifar10,freeze6,runlocal`):

    python -m vitjax.main --config=configs/vit_b16.py:cifar10,runlocal --workdir=/tmp/vit_b16_runlocal
"""

from vitjax.configs import finetune

# dataset -> (train split, eval split, total steps, base learning rate) as in the public fine-tuning configs.
PRESETS = {
  "cifar10": ("train[:98%]", "test", 10_000, 0.03),
  "cifar100": ("train[:98%]", "test", 10_000, 0.03),
  "imagenet2012": ("train[:99%]", "validation", 20_000, 0.03),
  "oxford_iiit_pet": ("train[:90%]", "test", 500, 0.003),
  "oxford_flowers102": ("train[:90%]", "test", 500, 0.003),
}

RUNLOCAL_MODEL = "vit_ti16"  # runlocal's model: the smallest published ViT with 16x16 patches.


def get_config(arg: str | None = "cifar10"):
  """The published recipe for `arg` = dataset[,strategy][,runlocal] (default cifar10, full)."""
  dataset, strategy, local = finetune.parse_arg(arg, PRESETS, model="vit_b16")
  train_split, eval_split, steps, learning_rate = PRESETS[dataset]
  config = finetune.base_config("vit_b16", dataset, strategy, train_split=train_split, eval_split=eval_split)
  config.data.pp_train = "resize(448)|random_crop(384)|flip_lr|value_range(-1, 1)"
  config.data.pp_eval = "resize(384)|value_range(-1, 1)"
  config.batch_size = 512
  config.eval_batch_size = 512
  config.total_steps = steps
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.momentum = 0.9
  config.optimizer.grad_clip_norm = 1.0
  config.schedule.name = "cosine"
  config.schedule.warmup_steps = 500 if steps > 500 else 50
  config.pretrained.dont_load = ("head/.*",)
  config.pretrained.head_bias_init = 0.0
  config.pretrained.keep_pre_logits = False
  finetune.apply(
    config, strategy, stem=r"embedding/|cls$|Transformer/posembed_input/", block="Transformer/encoderblock_{}/"
  )
  config.log_every = 50
  config.eval_every = 1000
  config.checkpoint_every = 1000
  return finetune.runlocal(config, model=RUNLOCAL_MODEL) if local else config
