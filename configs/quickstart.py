"""Quickstart: a micro ViT (4 layers, width 128, 16x16 patches at 32x32) learns the embedded handwritten digits.

    python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/vitjax-quickstart

Measured (test accuracy on the 360 held-out digits; wall time with compilation, `/usr/bin/time -v` on the command):
- 2-core AMD EPYC (the machine of benchmarks/RESULTS.md): 98.06% (loss 0.1092), 50 s;
- 2-core AMD EPYC Zen 3 (AVX2, no AVX-512): 97.78% (loss 0.0928), 86-140 s over several runs on a shared machine.
Each machine repeats its own number exactly with the same seed; the CPU kind changes the last bits of the arithmetic
and so the trajectory: expect 97-98.1% in 50 s to 2.5 minutes on 2 cores. See benchmarks/RESULTS.md.

Smoke run of the same code path in under a minute (20 steps, the first 64 test digits):

    python -m vitjax.main --config=configs/quickstart.py:runlocal --workdir=/tmp/vitjax-quickstart-runlocal
"""

from vitjax.configs import common
from vitjax.errors import ConfigError


def get_config(arg: str | None = None):
  """The quickstart run, or with `runlocal` its smoke run."""
  rest, local = common.split_runlocal(arg)
  if rest:
    raise ConfigError(f"Unknown argument {rest!r} for quickstart; choose one of: {common.RUNLOCAL} (or none).")
  config = common.get_base_config()
  config.name = "quickstart"
  config.model.name = "vit_micro16"
  config.model.classifier = "gap"
  config.model.posemb = "sincos2d"
  config.model.dropout_rate = 0.0
  config.model.stochastic_depth = 0.0
  config.model.dtype = "float32"  # Compute dtype; "bfloat16" keeps float32 parameters and optimizer state.
  config.data.dataset = "vitjax_digits"
  # The stored digits are 8x8 grayscale; upscale to 32x32 RGB here, after shifting by up to one whole original pixel.
  config.data.pp_train = "pad_and_crop(1)|resize(32, method='nearest')|to_rgb|value_range(-1, 1)"
  config.data.pp_eval = "resize(32, method='nearest')|to_rgb|value_range(-1, 1)"
  config.data.cache = True
  config.batch_size = 64
  config.eval_batch_size = 120
  config.total_steps = 1500
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.05
  config.schedule.warmup_steps = 100
  config.log_every = 100
  config.eval_every = 500
  config.checkpoint_every = 500
  return common.runlocal(config) if local else config
