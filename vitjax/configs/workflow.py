"""From a folder of images to a tuned, deployed model: the stages of ``python -m vitjax.workflow`` (its default
config; ``configs/workflow.py`` in a checkout).

    python -m vitjax.workflow --images=/data/my_images --workdir=/tmp/my_images-workflow --budget=30m
    python -m vitjax.workflow --images=/tmp/digits --workdir=/tmp/wf --config=configs/workflow.py:runlocal

Every field can be overridden (``--config.tune.trials=20``). ``run_config`` builds each training run for the split
folder (configs/folder.py picks the model, preprocessing and recipe from the images); the stages change only what
they say: the model (select), the searched hyperparameters (tune), the seed (ensemble), the objective (deploy).
``runlocal`` shrinks everything to a smoke run of about a minute on 2 CPU cores: micro models, a few steps each.
"""

import ml_collections

from vitjax.configs import common
from vitjax.errors import ConfigError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The workflow's stages and their settings; ``runlocal`` for the smoke run."""
  rest, local = common.split_runlocal(arg)
  if rest:
    raise ConfigError(f"Unknown argument {rest!r} for configs/workflow.py; choose {common.RUNLOCAL} (or none).")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.budget = "30m"  # Wall time of the whole workflow (s, m or h); --budget overrides it.
  # Called with the split folder as its argument; configs/NAME.py is found in the package (vitjax/configs/NAME.py) too.
  config.run_config = "configs/folder.py"
  config.runlocal = local  # Each run shrunk by common.runlocal before the stages set their steps.
  # Share of the budget per stage; a stage's runs stop at its share of what is left.
  config.shares = ml_collections.ConfigDict(
    {"baseline": 0.1, "select": 0.2, "tune": 0.4, "ensemble": 0.15, "deploy": 0.1, "report": 0.05}
  )
  config.split = ml_collections.ConfigDict(
    {
      "fractions": ml_collections.ConfigDict({"train": 0.7, "val": 0.15, "test": 0.15}),
      # Largest over smallest training class above this: train with the focal loss (losses.focal_loss).
      "imbalance_threshold": 3.0,
    }
  )
  config.baseline = ml_collections.ConfigDict(
    {
      "features": ("hog", "raw_pixels"),
      "classifiers": ("svm_rbf", "logistic"),
      "search": True,  # The small grid of config.baseline.grid (vitjax/configs/common.py), cross-validated on train.
      "model": "resnet20",  # The small network from scratch, the run config's own recipe.
      "epochs": 10.0,
    }
  )
  config.select = ml_collections.ConfigDict(
    {
      "candidates": ("mobilenet_v3_small", "resnet20", "resnet18", "efficientnet_b0"),
      # With --pretrained: this model (fine-tuned from those weights) joins at pretrained_pp's input.
      "pretrained_model": "vit_b16",
      "pretrained_pp": "resize(224)|to_rgb|value_range(-1, 1)",
      "epochs": 5.0,
      # Steps timed after the first (which compiles) before a candidate's time to finish is judged.
      "probe_steps": 20,
    }
  )
  config.tune = _tuning()
  config.ensemble = ml_collections.ConfigDict({"seeds": 3})  # The best trial's run is the first member.
  config.deploy = ml_collections.ConfigDict(
    {
      "alpha": 0.5,
      "temperature": 2.0,
      "epochs": 10.0,
      "formats": ("tflite", "onnx"),  # Each exported with `quantize` and measured in its own runtime.
      "quantize": "int8",
      "latency_images": 50,
    }
  )
  # The deployed model's first errors on the test split explained by --mode=explain, shown in the report.
  config.report = ml_collections.ConfigDict({"explain_methods": ("gradients", "occlusion"), "explain_images": 3})
  # The deployed model's most frequent mistakes on the test split, with up to this many test images of each.
  config.report.update(confused_pairs=5, confused_examples=4)
  return _runlocal(config) if local else config


def _tuning() -> ml_collections.ConfigDict:
  """The Optuna study: its size, where it is stored and the search space of its trials."""
  return ml_collections.ConfigDict(
    {
      "trials": 12,
      "study": "workflow",
      "storage": "",  # An RDB URL Optuna takes; "": sqlite in the workdir. --storage overrides it.
      "learning_rate": (1e-4, 0.3),  # Log-uniform.
      "weight_decay": (1e-6, 1e-2),  # Log-uniform.
      "label_smoothing": (0.0, 0.2),
      "augmentation": (0.0, 1.0),  # Pad-and-crop by up to a quarter of the side (0: none).
      "epochs": (3.0, 15.0),
      "startup_trials": 3,  # Trials the median pruner lets finish before it compares.
      "evals_per_trial": 4,  # Validation evaluations per trial: what the pruner sees.
    }
  )


def _runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Two micro ViTs, a few steps each: the whole workflow in about a minute."""
  config.budget = "20m"  # Generous: a loaded 2-core machine compiles slowly; stages stop early when it runs out.
  config.baseline.update(features=("raw_pixels",), classifiers=("logistic",), search=False, model="vit_micro8")
  config.baseline.epochs = 0.1
  config.select.update(candidates=("vit_micro8", "vit_micro4"), epochs=0.1, probe_steps=2)
  config.select.pretrained_model = "vit_micro16"
  config.select.pretrained_pp = "resize(16)|to_rgb|value_range(-1, 1)"
  config.tune.update(trials=2, startup_trials=1, evals_per_trial=2, epochs=(0.1, 0.2))
  config.ensemble.seeds = 2
  config.deploy.update(epochs=0.1, latency_images=10)
  config.report.update(explain_methods=("gradients",), explain_images=2)
  return config
