"""Classical baselines on the embedded digits: every feature x classifier, on the quickstart's split and eval input.

    python -m vitjax.main --config=configs/baseline_digits.py --workdir=/tmp/baseline --mode=baseline

Measured (1,437 train / 360 test digits at 32x32, n_jobs=1, 2 busy CPU cores, 80 s wall time; benchmarks/RESULTS.md
has every pair and its times), against the quickstart ViT's 98.06% on the same split:

    feature      svm_linear  svm_rbf  random_forest   knn   naive_bayes  logistic
    hog            98.33%    98.89%      95.28%      96.39%    87.78%     96.39%
    lbp            84.17%    89.44%      81.94%      80.83%    74.72%     82.22%
    color_hist     26.94%    25.56%      23.89%      20.83%    27.50%     25.56%
    gabor          98.06%    99.17%      97.78%      97.22%    92.22%     98.06%
    sift_bow       92.78%    92.50%      92.50%      91.67%    80.00%     93.33%
    raw_pixels     97.22%    98.61%      97.50%      98.06%    77.50%     95.28%
    hog+lbp        99.17%    98.89%      96.11%      96.39%    88.33%     98.61%

The digits are grayscale, so colour histograms only see ink coverage: they are in the table as the floor.

The config is the quickstart's (same data, same pp_eval, same ViT), so the same workdir can hold both: train with
`--mode=train` first and the baseline table shows the ViT's accuracy beside the baselines'.

Smoke run of the same code path (at most 256 training digits, the first 64 test digits; trains like the
quickstart's smoke run with `--mode=train`):

    python -m vitjax.main --config=configs/baseline_digits.py:runlocal --workdir=/tmp/baseline-runlocal --mode=baseline
"""

from vitjax.configs import common, sibling
from vitjax.errors import ConfigError

quickstart = sibling(__file__, "quickstart")  # The config this one builds on, beside it.


def get_config(arg: str | None = None):
  """The quickstart run with every baseline asked for, or with `runlocal` its smoke run."""
  rest, local = common.split_runlocal(arg)
  if rest:
    raise ConfigError(f"Unknown argument {rest!r} for baseline_digits; choose one of: {common.RUNLOCAL} (or none).")
  config = quickstart.get_config()
  config.name = "baseline_digits"
  baseline = config.baseline
  baseline.features = ("hog", "lbp", "color_hist", "gabor", "sift_bow", "raw_pixels", "hog+lbp")
  baseline.classifiers = ("svm_linear", "svm_rbf", "random_forest", "knn", "naive_bayes", "logistic")
  baseline.image_size = 32  # pp_eval's 32x32 upscale of the 8x8 digits: every feature sees what the ViT sees.
  baseline.hog.pixels_per_cell = 8  # 4 x 4 cells of 2 x 2 digit pixels.
  baseline.lbp.grid = 2  # Where the strokes are matters for digits: one histogram per quadrant.
  baseline.gabor.grid = 4
  return common.runlocal(config) if local else config
