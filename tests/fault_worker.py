"""`python -m vitjax.main` with a fault timed from inside: the process SIGKILLs itself in the middle of a checkpoint
save or of an evaluation, as a host lost at that moment would be. Used by tests/test_faults_multihost.py and
benchmarks/faults.py; the library itself reads no environment variable.

    VITJAX_TEST_FAULT=save:8 python tests/fault_worker.py --config=... --workdir=... --nosupervise [main's flags]

`save:STEP`: once the save of checkpoint STEP has started (Orbax writes it in the background). `eval:N`: at the
start of the Nth evaluation of the run (the other processes wait in its collectives).
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from vitjax import checkpoints, main  # noqa: E402


def _die() -> None:
  sys.stdout.flush()
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def inject(fault: str) -> None:
  """Wraps the library function that `fault` (save:STEP or eval:N) names so that it kills this process."""
  where, _, at = fault.partition(":")
  if where == "save":
    save = checkpoints.save

    def save_then_die(manager, state, *, step, meta):
      save(manager, state, step=step, meta=meta)
      if step == int(at):
        _die()

    checkpoints.save = save_then_die
  elif where == "eval":
    from vitjax.evaluate import registry

    evaluate, calls = registry.evaluate, []

    def die_in_eval(*args, **kwargs):
      calls.append(1)
      if len(calls) == int(at):
        _die()
      return evaluate(*args, **kwargs)

    registry.evaluate = die_in_eval
  else:
    raise ValueError(f"VITJAX_TEST_FAULT={fault!r}: expected save:STEP or eval:N.")


if __name__ == "__main__":
  if os.environ.get("VITJAX_TEST_FAULT"):
    inject(os.environ["VITJAX_TEST_FAULT"])
  app.run(main.main, flags_parser=main.parse_flags)
