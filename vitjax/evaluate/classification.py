"""The `classification` evaluator: loss, accuracy and every other metric of `report.compute_metrics` on a labelled
split, from the logits of the weights (averaged over an ensemble's members and over `--mode=eval`'s test-time
views). Training logs its numbers (`eval/accuracy`, `eval/loss`, ..., `eval/ema_*` for the moving average);
``--mode=eval`` also writes its report: `eval_<prefix><split>.json`, the confusion matrix and reliability diagram."""

from collections.abc import Sequence
from typing import Any

import ml_collections

from vitjax import data
from vitjax.errors import ConfigError
from vitjax.evaluate import registry, report


@registry.register(
  "classification",
  options={
    "dataset": registry.Option("source", "source (config.data) or target (config.data.target and its target_* keys)"),
    "split": registry.Option(None, "the split scored (None: the dataset's eval split)", str),
    "seq_len": registry.Option(None, "NaFlex: patches per image (None: the longest of config.data.seq_lens)", int),
  },
)
class Classification(registry.Evaluator):
  """Metrics of the model's predictions against the labels of one split."""

  def __init__(self, options: ml_collections.ConfigDict, setting: registry.Setting):
    if options.dataset not in registry.SOURCES:
      raise ConfigError(f"Unknown dataset={options.dataset!r}; choose one of: {', '.join(registry.SOURCES)}.")
    self.setting, self.split = setting, options.split or setting.splits(options.dataset)[1]
    target = options.dataset == "target"
    self.dataset_name = setting.config.data.target if target else setting.config.data.dataset
    self.multilabel = (setting.target if target else setting.source).multilabel
    self.ds = setting.dataset(options.dataset, self.split, seq_len=options.seq_len)
    self.logits_fn = report.make_logits_fn(setting.model, tta=setting.tta, crop_size=setting.crop_size)

  def __call__(self, weights: registry.Weights) -> dict[str, Any]:
    results = {"dataset": self.dataset_name, "split": self.split, **self.metrics(weights.members)}
    if weights.ema is not None:
      results.update(registry.scalars(self.metrics((weights.ema,)), "ema_"))
    return results

  def metrics(self, members: Sequence[Any]) -> dict[str, Any]:
    """Every metric of the mean logits of `members` over the split."""
    total = targets = None
    for variables in members:
      logits, targets = report.collect_logits(self.logits_fn, variables, data.as_numpy(self.ds), self.setting.mesh)
      total = logits if total is None else total + logits
    options = self.setting.config.eval
    return report.compute_metrics(
      total / len(members),
      targets,
      multilabel=self.multilabel,
      loss_fn=self.setting.loss_fn,
      threshold=options.multilabel_threshold,
      num_bins=options.calibration_bins,
    )

  def write_report(self, results: dict[str, Any], workdir: str, *, prefix: str, class_names: Sequence[str]) -> None:
    report.write_report(
      results, workdir, class_names=list(class_names), name=report.split_file_name(prefix + self.split)
    )
