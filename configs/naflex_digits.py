"""NaFlex: a micro NaFlex ViT (4 layers, width 128, 4x4 patches) learns the embedded digits placed on wide, tall
and square canvases (`vitjax_digits_canvas`), each image at its own aspect ratio, trained over 16, 36 and 64 patches
(batches cycle through the three; one compiled step each) and evaluated at each of them and at 100.

    python -m vitjax.main --config=configs/naflex_digits.py --workdir=/tmp/naflex-digits
    python -m vitjax.main --config=configs/naflex_digits.py --workdir=/tmp/naflex-digits --mode=eval

The eval record holds `accuracy` (at the longest training length, 64 patches) and `seq16_accuracy`,
`seq36_accuracy`, `seq100_accuracy`: one model, one accuracy/compute curve. Measured on a shared 2-core AMD EPYC
(11 minutes with compilation): 80.8% at 16 patches, 83.9% at 36, 63.3% at 64 and 55.0% at 100.
Accuracy peaks at 36 patches and falls at 100, beyond the longest training length. Other lengths:
`--config.evals.val.seq_len=144`; predict at a length: `python -m vitjax.predict --workdir=... --seq_len=36 FILES`.
Smoke run of the same code path:

    python -m vitjax.main --config=configs/naflex_digits.py:runlocal --workdir=/tmp/naflex-digits-runlocal
"""

from vitjax.configs import common
from vitjax.errors import ConfigError
from vitjax.evaluate import registry

PATCH = 4
TRAIN_SEQ_LENS = (16, 36, 64)
EVAL_SEQ_LENS = (16, 36, 100)  # Besides the default, the longest training length.


def get_config(arg: str | None = None):
  """The NaFlex digits run, or with `runlocal` its smoke run."""
  rest, local = common.split_runlocal(arg)
  if rest:
    raise ConfigError(f"Unknown argument {rest!r} for naflex_digits; choose one of: {common.RUNLOCAL} (or none).")
  config = common.get_base_config()
  config.name = "naflex_digits"
  config.model.name = f"naflexvit_micro{PATCH}"
  config.model.posemb_grid = (8, 8)
  config.model.dtype = "float32"
  config.data.dataset = "vitjax_digits_canvas"
  config.data.seq_lens = TRAIN_SEQ_LENS
  # One channel, as stored; the image keeps its aspect ratio at each length; padding patches fill the rest.
  resize, patchify = f"resize_to_seq({{seq_len}}, {PATCH})", f"patchify({PATCH}, {{seq_len}})"
  config.data.pp_eval = f"decode(channels=1)|{resize}|value_range(-1, 1)|{patchify}"
  # Each training digit sits at four fixed places; shifting it by up to 4 pixels adds more (one placement and no
  # shift: 59.7% at 64 patches after 1500 steps).
  config.data.pp_train = f"decode(channels=1)|pad_and_crop(4)|{resize}|value_range(-1, 1)|{patchify}"
  config.data.cache = True
  for seq_len in EVAL_SEQ_LENS:
    config.evals[f"seq{seq_len}"] = registry.config("classification", seq_len=seq_len, prefix=f"seq{seq_len}_")
  config.batch_size = 64
  config.eval_batch_size = 120
  config.total_steps = 2000
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 1e-4
  config.schedule.warmup_steps = 150
  config.log_every = 100
  config.eval_every = 500
  config.checkpoint_every = 500
  return common.runlocal(config) if local else config
