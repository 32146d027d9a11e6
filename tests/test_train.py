"""The training loop end to end on the digits: outputs, resume, and early errors on bad configs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from tests.support import checkpoint_params, parse_config_flag, tiny_config
from vitjax import checkpoints, data, models
from vitjax.evaluate import registry
from vitjax.train import hooks, loop, objectives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_file_with_argument_and_overrides():
  config = parse_config_flag(
    f"--config={REPO}/configs/vit_b16.py:cifar100", "--config.batch_size=64", "--config.optimizer.learning_rate=0.01"
  )
  assert (config.name, config.data.dataset, config.batch_size, config.optimizer.learning_rate) == (
    "vit_b16_cifar100",
    "cifar100",
    64,
    0.01,
  )
  assert config.optimizer.grad_clip_norm == 1.0 and config.total_steps == 10_000
  with pytest.raises(Exception, match="no_such_key"):
    parse_config_flag(f"--config={REPO}/configs/quickstart.py", "--config.no_such_key=1")
  with pytest.raises(Exception, match="Unknown preset 'mnist'"):
    parse_config_flag(f"--config={REPO}/configs/vit_b16.py:mnist")


def test_run_writes_results_curves_and_resumes_exactly(digits_dir, tmp_path):
  config = tiny_config(digits_dir)
  config.schedule.name = "constant"
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  results = loop.train_and_evaluate(config, straight)
  assert results["step"] == 6 and results["num_examples"] == 360 and 0 <= results["accuracy"] <= 1
  with open(os.path.join(straight, "results.json")) as f:
    saved = json.load(f)
  assert {"accuracy", "loss", "step", "train_seconds", "config"} <= set(saved) and saved["config"] == "quickstart"
  assert os.path.getsize(os.path.join(straight, "curves.png")) > 10_000
  with open(os.path.join(straight, "class_names.json")) as f:
    assert json.load(f) == [str(d) for d in range(10)]
  run = checkpoints.load_run(straight)  # What evaluation, prediction and export read back.
  assert run.config.name == "quickstart" and run.config.model.classifier == "gap" and run.meta["step"] == 6
  assert run.class_names == [str(d) for d in range(10)] and run.batch_stats == {} and run.ema_params is None
  jax.tree.map(np.testing.assert_array_equal, run.variables()["params"], checkpoint_params(straight))
  with pytest.raises(ValueError, match="kept no moving average"):
    run.variables(ema=True)

  # The same run in two halves: the second half restores step 3 and its data position.
  config.total_steps = 3
  loop.train_and_evaluate(config, resumed)
  config.total_steps = 6
  second = loop.train_and_evaluate(config, resumed)
  assert second["step"] == 6
  jax.tree.map(np.testing.assert_array_equal, checkpoint_params(straight), checkpoint_params(resumed))

  # A third call has nothing left to train: it reports the finished run without changing it.
  again = loop.train_and_evaluate(config, resumed)
  assert again["accuracy"] == second["accuracy"] and again["step"] == 6


def test_load_run_names_what_is_missing(tmp_path):
  with pytest.raises(ValueError, match="No Orbax checkpoint folder"):
    checkpoints.load_run(str(tmp_path / "nowhere"))
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="holds no checkpoint yet: train first"):
    checkpoints.load_run(str(tmp_path))


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("model", {"name": "nonexistent"}, r"Unknown model 'nonexistent'; choose one of: .*vit_b16"),
    ("batch_size", 12, r"config.batch_size=12 must be a positive multiple of the device count 8"),
    ("data", {"dataset": "no_such_dataset"}, r"Unknown dataset 'no_such_dataset'; .*vitjax_digits"),
  ],
)
def test_bad_config_fails_before_anything_runs(digits_dir, tmp_path, key, value, message):
  config = tiny_config(digits_dir)
  if isinstance(value, dict):
    config[key].update(value)
  else:
    config[key] = value
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


DIVERGING = [
  "--config.optimizer.name=sgd",
  "--config.optimizer.learning_rate=1e30",
  "--config.optimizer.grad_clip_norm=0",
]
SHORT = ["--config.total_steps=4", "--config.batch_size=16", "--config.log_every=2", "--config.eval_every=4"]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--config.model.name=nonexistent"], "error: Unknown model 'nonexistent'; choose one of:"),
    (
      [*DIVERGING, *SHORT],
      "error: Non-finite loss (nan) or gradient norm (nan) at step 3; last good checkpoint: none yet",
    ),
  ],
)
def test_command_line_reports_errors_in_one_line(tmp_path, flags, message):
  command = [sys.executable, "-m", "vitjax.main", "--config=configs/quickstart.py", f"--workdir={tmp_path}", *flags]
  run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1].startswith(message) and "Traceback" not in run.stderr


def test_early_stopping_stops_when_the_metric_stalls(digits_dir, tmp_path):
  config = tiny_config(digits_dir, total_steps=8)
  config.eval_every = 1
  config.optimizer.learning_rate = 0.0  # Nothing changes, so accuracy never improves after the first eval.
  config.early_stopping.patience = 2
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 3 and not results["finished"]
  assert results["stop_reason"] == "no eval/accuracy gain in 2 evals"
  assert "3" in os.listdir(tmp_path / "checkpoints")


def test_non_finite_loss_names_the_last_good_checkpoint_and_keeps_it(digits_dir, tmp_path):
  config = tiny_config(digits_dir, total_steps=3)
  loop.train_and_evaluate(config, str(tmp_path))
  config.total_steps = 9
  config.optimizer.learning_rate = 1e30  # Same optimizer, so the checkpoint restores; its next update overflows.
  with pytest.raises(hooks.NonFiniteLossError, match=r"at step [4-6]; last good checkpoint: step 3\."):
    loop.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


@objectives.register("fgsm_for_test")
def _fgsm(config, setting):
  """Adversarial training (FGSM, Goodfellow et al. 2015) written outside the library: the objective is the only
  extension point it needs."""
  del config
  epsilon = 4 / 255 * 2  # 4 pixel levels on the model's [-1, 1] input scale.

  def objective(forward, params, batch, rng):
    def clean_loss(images):
      logits, _ = forward(params, images, rng)
      return setting.loss_fn(logits, batch["labels"]).mean()

    perturbed = batch["image"] + epsilon * jnp.sign(jax.grad(clean_loss)(batch["image"]))
    logits, batch_stats = forward(params, perturbed, rng)
    metrics = {
      "accuracy": objectives.accuracy(logits, batch["labels"]),
      "perturbation": jnp.abs(perturbed - batch["image"]).max(),
    }
    return setting.loss_fn(logits, batch["labels"]).mean(), metrics, batch_stats

  return objective


def test_an_objective_defined_outside_the_library_trains_in_the_loop_with_mfu_and_a_profile(digits_dir, tmp_path):
  config = tiny_config(digits_dir, objective="fgsm_for_test")
  config.profile.update(first_step=2, num_steps=2)
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 6 and np.isfinite(results["loss"])
  with open(tmp_path / "metrics.jsonl") as f:
    train_rows = [r for r in map(json.loads, f) if r["split"] == "train"]
  assert all(0 < r["mfu"] <= 1 for r in train_rows)
  assert len(list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))) == 1
  # The zero-initialised head gives no input gradient at step 1; from then on every step moves pixels by epsilon.
  assert [r["step"] for r in train_rows] == [3, 6] and 0 < train_rows[0]["perturbation"] < 8 / 255
  assert train_rows[1]["perturbation"] == pytest.approx(8 / 255, rel=1e-5)


def test_unknown_objective_fails_naming_the_choices(digits_dir, tmp_path):
  with pytest.raises(ValueError, match=r"Unknown config.objective='nope'; choose one of: .*supervised"):
    loop.train_and_evaluate(tiny_config(digits_dir, objective="nope"), str(tmp_path))


def test_switching_the_model_skips_the_other_familys_options(caplog):
  config = quickstart.get_config()
  config.model.name = "resnet18"
  model = models.from_config(config.model, num_classes=10)
  assert type(model).__name__ == "ResNet" and model.stage_sizes == (2, 2, 2, 2)
  assert "Model resnet18 takes no classifier, dropout_rate, posemb, stochastic_depth: ignored." in caplog.text


def test_bfloat16_compute_keeps_float32_state(digits_dir, tmp_path):
  config = tiny_config(digits_dir, total_steps=2)
  config.model.dtype = "bfloat16"
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results["loss"])
  params = checkpoint_params(str(tmp_path))
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype("float32")}


def test_feature_evaluators_and_distillation_run_inside_the_loop(digits_dir, tmp_path):
  teacher = tiny_config(digits_dir, total_steps=4)
  teacher.evals.fewshot = registry.config("fewshot", every=4, shots=(1, 5))
  teacher.evals.knn = registry.config("knn", every=4, k=5)
  results = loop.train_and_evaluate(teacher, str(tmp_path / "teacher"))
  assert {"fewshot_1shot", "fewshot_5shot", "knn_5"} <= set(results)
  assert all(0.0 <= results[k] <= 1.0 for k in ("fewshot_1shot", "fewshot_5shot", "knn_5"))

  def first_loss(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return next(r["loss"] for r in map(json.loads, f) if r["split"] == "train")

  student = tiny_config(digits_dir, total_steps=3)
  student.distill.model = teacher.model
  student.objective = "distill"
  student.distill.update(checkpoint=str(tmp_path / "teacher"), kind="soft", alpha=1.0, temperature=2.0)
  distilled = loop.train_and_evaluate(student, str(tmp_path / "student"))
  plain = tiny_config(digits_dir, total_steps=3)
  loop.train_and_evaluate(plain, str(tmp_path / "plain"))
  assert np.isfinite(distilled["loss"])
  # Same student, same batches: only the teacher's soft targets can change the training loss.
  assert first_loss(str(tmp_path / "student")) != pytest.approx(first_loss(str(tmp_path / "plain")), rel=1e-3)


@registry.register("mean_logit_for_test", options={"scale": registry.Option(1.0, "multiplies the mean logit")})
class _MeanLogit(registry.Evaluator):
  """An evaluator written outside the library: the mean logit over the first eval batch, times `scale`."""

  def __init__(self, options, setting):
    self.scale, self.model = options.scale, setting.model
    self.ds = setting.dataset("source", setting.config.data.eval_split)

  def __call__(self, weights):
    batch = next(data.as_numpy(self.ds))
    logits = self.model.apply(weights.members[0], batch["image"], train=False)
    return {"mean_logit": self.scale * float(jnp.mean(logits)), "note": "not a number: reports only"}


def test_an_evaluator_defined_outside_the_library_runs_at_its_own_interval(digits_dir, tmp_path):
  config = quickstart.get_config("runlocal")
  config.data.data_dir, config.total_steps = digits_dir, 4
  config.evals.toy = registry.config("mean_logit_for_test", every=2, scale=2.0, prefix="toy_")
  results = loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
  # The toy runs at steps 2 and 4; the main evaluation (eval_every 10) only at the end.
  assert [r["step"] for r in evals] == [2, 4] and "accuracy" not in evals[0] and "accuracy" in evals[1]
  assert all(np.isfinite(r["toy_mean_logit"]) and "toy_note" not in r for r in evals)
  assert results["toy_mean_logit"] == evals[1]["toy_mean_logit"] and results["num_examples"] == 64

  config.evals.toy.sale = 3.0
  with pytest.raises(ValueError, match=r"Unknown option config.evals.toy.sale of type 'mean_logit_for_test'; it "):
    loop.train_and_evaluate(config, str(tmp_path / "bad"))
  del config.evals.toy["sale"]
  config.evals.toy.type = "mean_logits"
  with pytest.raises(ValueError, match=r"Unknown config.evals.toy.type='mean_logits'; choose one of: classification"):
    loop.train_and_evaluate(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")
