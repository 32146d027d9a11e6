"""The quickstart model and budget (configs/quickstart.py) trained to resist attacks: PGD adversarial training
(Madry et al. 2018) at an L-inf radius of 8 pixel levels, 7 steps of 2; the argument picks `trades` (Zhang et al.
2019, beta 6) or `fast_fgsm` (Wong et al. 2020) instead.

    python -m vitjax.main --config=configs/robust_digits.py --workdir=/tmp/robust-digits
    python -m vitjax.main --config=configs/robust_digits.py --workdir=/tmp/robust-digits --mode=robustness

Compare with the quickstart run's `--mode=robustness` (benchmarks/RESULTS.md has both). Smoke run:

    python -m vitjax.main --config=configs/robust_digits.py:trades,runlocal --workdir=/tmp/robust-digits-runlocal
"""

from vitjax.configs import common, sibling
from vitjax.errors import ConfigError

quickstart = sibling(__file__, "quickstart")  # The config this one builds on, beside it.

OBJECTIVES = ("pgd_at", "trades", "fast_fgsm")


def get_config(arg: str | None = None):
  """PGD adversarial training of the quickstart model, or the objective the argument names; `runlocal` shrinks it."""
  rest, local = common.split_runlocal(arg)
  objective = rest or "pgd_at"
  if objective not in OBJECTIVES:
    choices = ", ".join(OBJECTIVES)
    raise ConfigError(
      f"Unknown argument {rest!r} for robust_digits; choose one of: {choices} (and/or {common.RUNLOCAL})."
    )
  config = quickstart.get_config()
  config.name = "robust_digits" if objective == "pgd_at" else f"robust_digits_{objective}"
  config.objective = objective
  config.adversarial.epsilon = 8.0
  config.adversarial.steps = 7
  config.adversarial.step_size = 2.0
  config.adversarial.trades_beta = 6.0
  return common.runlocal(config) if local else config
