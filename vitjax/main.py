"""Command-line entry point: ``python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/run``.

Flags and the cheap facts of the config are checked before JAX and TensorFlow load and before anything is written;
a config mistake (`ConfigError`) ends the command with one line, anything else with its traceback.
"""

import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Keep TensorFlow's C++ start-up chatter off the console.

from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # Before JAX starts its CPU backend.

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vitjax import console, describe, peers, preflight  # noqa: E402
from vitjax.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Config file, optionally with an argument: configs/vit_b16.py:cifar10.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and results; re-running resumes.")
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval", "baseline", "robustness", "explain", "describe"],
  "train (and evaluate), evaluate the latest checkpoint, fit and compare the classical baselines, or measure the "
  "latest checkpoint's robustness (attacks, corruptions, label shift, uncertainty), or explain its predictions; "
  "describe: print every key of --config with its value and what it means (no --workdir needed).",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs outside TPU/SLURM.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool(
  "supervise",
  True,
  "Multi-process runs: run the job in a child process, so that when JAX's runtime aborts it because process 0 "
  "(the coordinator) was lost, the end is one line and exit status 75 instead of a stack dump.",
)
flags.mark_flag_as_required("config")
flags.register_multi_flags_validator(
  ["mode", "workdir"],
  lambda values: values["mode"] == "describe" or bool(values["workdir"]),
  message="--workdir is required (except with --mode=describe).",
)

HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that a help request exits 0 (absl's help flags exit 1) and a config that cannot
  load (no such file, a ConfigError while it builds) is one line."""
  try:
    remaining = FLAGS(argv)
  except SystemExit:
    if any(arg.lstrip("-").split("=")[0] in HELP_FLAGS for arg in argv[1:] if arg.startswith("-")):
      sys.exit(0)
    raise
  except flags.Error as e:
    config_error = _innermost_config_error(e)
    if config_error is not None:
      sys.exit(f"error: {config_error}")
    sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.")
  path = config_flags.get_config_filename(FLAGS["config"]).split(":", 1)[0]  # The file, without its argument.
  if not os.path.isfile(path):
    sys.exit(f"error: there is no config file {path!r} (--config=FILE or FILE:ARGUMENT, e.g. configs/quickstart.py).")
  return remaining


def _innermost_config_error(error: BaseException) -> ConfigError | None:
  """The ConfigError a config file raised, under the flag library's re-raised copies (which hold its traceback)."""
  found = None
  while error is not None:
    if isinstance(error, ConfigError):
      found = error
    error = error.__cause__ or error.__context__
  return found


def _launched_as_one_of_many() -> bool:
  """True under a multi-task SLURM step or on a multi-worker TPU VM slice, where jax can self-configure."""
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  tpu_workers = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(","))
  return slurm_tasks > 1 or tpu_workers > 1


def initialize_distributed(config):
  """Joins a multi-process run (from flags when given, else from the SLURM or TPU VM environment) with the timeouts
  of `config.distributed`, and starts watching the other processes (`peers.PeerWatch`); None in a single process."""
  import jax

  timeout = config.distributed.heartbeat_timeout  # Positive: checked by preflight.validate.
  timeouts = dict(
    initialization_timeout=int(config.distributed.init_timeout),
    heartbeat_timeout_seconds=peers.service_timeout(timeout),
  )
  if FLAGS.coordinator_address or FLAGS.num_processes:
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      **timeouts,
    )
  elif _launched_as_one_of_many():
    jax.distributed.initialize(**timeouts)
  else:
    return None
  from jax._src import distributed  # The client jax.distributed made; Orbax's multihost code uses it the same way.

  client = distributed.global_state.client
  return peers.PeerWatch(
    client, process_index=jax.process_index(), process_count=jax.process_count(), timeout=timeout
  ).start()


def describe_config(config) -> str:
  """`--mode=describe`: every key of `config` with its value and the doc of vitjax/configs/common.py."""
  sources = []
  for module in ("common", "sections"):  # get_base_config and the section builders it calls.
    with open(importlib.import_module(f"vitjax.configs.{module}").__file__) as f:
      sources.append(f.read())
  docs = describe.key_docs("\n".join(sources))
  if "vitjax.models" in sys.modules:  # Imported by the config already, so its option docs cost nothing more.
    describe.add_docs(docs, "model", sys.modules["vitjax.models"].option_docs())
  return describe.describe(config, docs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.mode == "describe":
    print(describe_config(FLAGS.config))
    return
  console.quiet_library_noise()
  try:
    preflight.validate(FLAGS.config, FLAGS.workdir, mode=FLAGS.mode)
  except ConfigError as e:
    sys.exit(f"error: {e}")  # Before JAX and TensorFlow load, and before the workdir is touched.
  if FLAGS.supervise and (FLAGS.coordinator_address or FLAGS.num_processes or _launched_as_one_of_many()):
    sys.exit(peers.supervise([sys.executable, "-m", "vitjax.main", *sys.argv[1:], "--nosupervise"]))
  run_mode(FLAGS.mode, FLAGS.config, FLAGS.workdir)


# Each mode's function, imported only when chosen: a mode's missing optional dependency costs the others nothing.
MODES = {
  "train": ("vitjax.train.loop", "train_and_evaluate"),
  "eval": ("vitjax.evaluate.report", "evaluate_checkpoint"),
  "baseline": ("vitjax.classical", "run_baseline"),
  "robustness": ("vitjax.robustness.report", "evaluate_robustness"),
  "explain": ("vitjax.explain", "run_explain"),
}
EXTRAS = {"cv2": "classical", "skops": "classical", "threadpoolctl": "classical"}


def mode_function(mode: str):
  """The function that runs `mode`; a missing optional dependency is one line naming the extra to install."""
  module, name = MODES[mode]
  try:
    return getattr(importlib.import_module(module), name)
  except ModuleNotFoundError as e:
    if e.name not in EXTRAS:
      raise
    sys.exit(f"error: --mode={mode} needs {e.name}: pip install 'vitjax[{EXTRAS[e.name]}]'")


def one_line_errors() -> tuple[type[Exception], ...]:
  """Errors that name the problem and the fix (or the file and host): one line at the command line."""
  from vitjax import checkpoints, data
  from vitjax.train import hooks

  return (
    data.DatasetUnavailableError,
    data.UnreadableImageError,
    data.InputPipelineError,
    hooks.NonFiniteLossError,
    checkpoints.CheckpointWriteError,
  )


def run_mode(mode: str, config, workdir: str) -> None:
  """Loads JAX and TensorFlow, runs `mode` and prints its result; config mistakes end it in one line."""
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # tf.data only: leave accelerator memory to JAX.
  watch = initialize_distributed(config)
  import jax

  logging.info(
    "JAX process %d of %d, %d local / %d global devices (%s).",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  run = mode_function(mode)
  try:
    results = run(config, workdir)
  except (ConfigError, *one_line_errors()) as e:
    if watch:
      watch.finish(e)  # The other processes stop too, naming this one, instead of waiting for it.
    sys.exit(f"error: {e}")  # One line, no traceback: these errors name the problem and the fix.
  except Exception as e:
    verdict = watch and watch.explain(e)
    if verdict:  # A lost or failed process caused this one's error (a collective without its peer).
      peers.end_process(verdict)
    raise
  if watch:
    watch.finish()
  if jax.process_index() == 0 and mode not in ("baseline", "explain"):  # These print their own table.
    print(summary(results), flush=True)


def summary(results: dict) -> str:
  """The run's final accuracy in a line, with every other evaluator's (`seq16_accuracy`, `ema_accuracy`, ...)."""
  line = (
    f"Final {results['split']} accuracy: {100 * results['accuracy']:.2f}% on {results['num_examples']} "
    f"examples at step {results['step']} ({results['train_seconds']:.0f}s of training)."
  )
  others = [
    f"{key} {100 * value:.2f}%"
    for key, value in sorted(results.items())
    if key.endswith("_accuracy") and not key.endswith("top5_accuracy") and isinstance(value, float)
  ]
  return line + (f" Also: {', '.join(others)}." if others else "")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
