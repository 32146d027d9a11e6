"""Checks of a config that need no JAX, TensorFlow or data: run by the entry point before those load (about 15 s)
and before anything is written into the workdir, so that a mistake costs a second instead of a half-made run.

Only what can be known from the config and the file system is checked here; each package still checks its own
part as it builds (the model name, the preprocessing ops, batch sizes against the device count).
"""

import os

import ml_collections

from vitjax.errors import ConfigError

# Pickled PyTorch checkpoints: loading one can run arbitrary code, so none is ever opened.
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
WEIGHT_SUFFIXES = (".npz", ".safetensors")
HUB_PREFIX = "hf-hub:"
RUN_CONFIG_FILE = "config.json"  # checkpoints.CONFIG_FILE: what makes a folder a training run's workdir.
# Modes that read the run in --workdir (eval too, unless config.eval.checkpoints names what to evaluate).
RUN_MODES = ("robustness", "explain")


def validate(config: ml_collections.ConfigDict, workdir: str | None, *, mode: str = "train") -> None:
  """Raises ConfigError at the first value that cannot work. A warmup longer than the run is no error: the run's
  length may only be known from the data, so the optimizer's schedule deals with it."""
  _check_workdir(workdir)
  for key in ("batch_size", "eval_batch_size", "accum_steps", "keep_checkpoints"):
    if config[key] < 1:
      raise ConfigError(f"config.{key}={config[key]} must be at least 1.")
  for key in ("total_steps", "log_every", "eval_every", "checkpoint_every"):
    if config[key] < 0:
      raise ConfigError(f"config.{key}={config[key]} must be 0 or more.")
  if not config.total_steps and config.num_epochs <= 0:
    raise ConfigError(f"config.num_epochs={config.num_epochs} must be positive (or set config.total_steps).")
  if config.schedule.warmup_steps < 0:
    raise ConfigError(f"config.schedule.warmup_steps={config.schedule.warmup_steps} must be 0 or more.")
  _check_distributed(config.distributed)
  if config.pretrained.path:
    check_weights(config.pretrained.path, "config.pretrained.path")
  if config.objective == "distill" and config.distill.checkpoint:
    for path in config.distill.checkpoint.split(","):  # Several: an ensemble teacher.
      check_weights(path.strip(), "config.distill.checkpoint")
  if mode == "eval":
    for path in config.eval.checkpoints:
      check_weights(path, "config.eval.checkpoints entry")
  if mode in RUN_MODES or (mode == "eval" and not config.eval.checkpoints):
    _check_run(workdir)


def _check_distributed(distributed: ml_collections.ConfigDict) -> None:
  """The multi-process timeouts, checked in single-process runs too: the same config may later run on many hosts."""
  for key in ("heartbeat_timeout", "init_timeout"):
    value = distributed[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
      raise ConfigError(f"config.distributed.{key}={value!r} must be a positive number of seconds (e.g. 60).")


def check_weights(path: str, name: str) -> None:
  """Fails unless `path` is a Hub name, a readable weight file or a folder (a run or an Orbax checkpoint)."""
  if path.startswith(HUB_PREFIX):
    return
  refuse_pickle(path)
  if not os.path.exists(path):
    raise ConfigError(
      f"{name}={path!r} does not exist: give a public .npz, a timm .safetensors file, a run's workdir or "
      f"{HUB_PREFIX}ORG/NAME."
    )
  if not os.path.isdir(path) and not path.endswith(WEIGHT_SUFFIXES):
    raise ConfigError(f"{name}={path!r} is neither a .npz nor a .safetensors file nor a run's workdir.")


def refuse_pickle(path: str) -> None:
  """A ConfigError for a pickled PyTorch checkpoint, saying how to convert it; nothing for other paths."""
  if path.endswith(PICKLE_SUFFIXES):
    raise ConfigError(
      f"{path!r} is a pickled PyTorch checkpoint, which can run arbitrary code when loaded and is never opened "
      "here; convert it once with `safetensors.torch.save_file(torch.load(path, weights_only=True), "
      "'model.safetensors')` and pass the .safetensors file."
    )


def _check_workdir(workdir: str | None) -> None:
  if workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir!r} is a file, not a folder: choose another path.")


def _check_run(workdir: str | None) -> None:
  if workdir and not os.path.isfile(os.path.join(workdir, RUN_CONFIG_FILE)):
    raise ConfigError(
      f"--workdir={workdir!r} holds no training run (no {RUN_CONFIG_FILE}): train there first with --mode=train, "
      "or give a run's workdir."
    )
