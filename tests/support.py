"""Helpers shared by several test modules: tiny configs, random variables, numpy reference layers."""

import math
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from ml_collections import config_flags

from configs import quickstart
from vitjax import models
from vitjax.configs import common
from vitjax.models import registry

# For tests of a choice made for XLA's CPU backend (a matmul path, a phase-split pooling): elsewhere it is not made.
cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="asserts what vitjax does on XLA's CPU backend")

# A tiny ViT used wherever compile time matters more than size.
TINY_VIT = dict(hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2)


def abstract_variables(model, images):
  """The model's variable tree as shapes and dtypes; nothing is computed or allocated."""
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def fill_random(abstract, *, seed: int = 0, scale: float = 0.3):
  """N(0, scale^2) arrays in the shapes of `abstract`; BatchNorm statistics get mean 0 and variance 1."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[0].key == "batch_stats":
      return np.full(leaf.shape, 1.0 if path[-1].key == "var" else 0.0, np.float32)
    return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, flax.core.unfreeze(abstract))


def random_variables(model, images, *, seed: int = 0, scale: float = 0.3):
  """Random parameters in the model's tree: zero-initialised heads would hide errors."""
  return fill_random(abstract_variables(model, images), seed=seed, scale=scale)


def evaluate(model, variables, images):
  """Jitted inference forward pass (op-by-op dispatch would spend the time budget compiling each op)."""
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)


def images_of(shape, seed: int = 1):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, -1.0, 1.0)


def flat(tree) -> dict:
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def np_layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_attention(q_in, kv_in, p):
  q = np.einsum("nld,dhk->nhlk", q_in, p["query"]["kernel"]) + p["query"]["bias"][:, None]
  k = np.einsum("nld,dhk->nhlk", kv_in, p["key"]["kernel"]) + p["key"]["bias"][:, None]
  v = np.einsum("nld,dhk->nhlk", kv_in, p["value"]["kernel"]) + p["value"]["bias"][:, None]
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("nhlk,hkd->nld", weights @ v, p["out"]["kernel"]) + p["out"]["bias"]


def np_mlp(x, p):
  h = np_gelu_tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def to_numpy(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), flax.core.unfreeze(tree))


def same_padding(size, k, s):
  """TensorFlow/XLA SAME padding (lo, hi) for one spatial dimension."""
  total = max((math.ceil(size / s) - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def np_conv(x, w, *, stride=1, padding="SAME", pad_value=0.0):
  """Direct convolution: out[n,i,j,o] = sum over (kh,kw,c) of xpad[n, i*s+kh, j*s+kw, c] * w[kh,kw,c,o]."""
  kh, kw = w.shape[:2]
  if padding == "SAME":
    pads = [same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride)]
  else:
    pads = [padding, padding]
  x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=pad_value)
  ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride] @ w[i, j]
  return out


def np_batch_norm(x, p, stats):
  return (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * p["scale"] + p["bias"]


def relu(x):
  return np.maximum(x, 0)


def tiny_config(digits_dir, **overrides):
  config = quickstart.get_config()
  config.data.data_dir = digits_dir
  config.batch_size = 16
  config.eval_batch_size = 40
  config.total_steps = 6
  config.log_every = config.eval_every = config.checkpoint_every = 3
  config.schedule.warmup_steps = 0
  for key, value in overrides.items():
    config[key] = value
  return config


def checkpoint_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "meta"))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored.state["params"]


def parse_config_flag(*args):
  argv = ["prog", *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def optimizer_config(**optimizer) -> ml_collections.ConfigDict:
  """The base config with a constant schedule and no clipping, SGD without momentum, then `optimizer`."""
  config = common.get_base_config()
  config.optimizer.update({"name": "sgd", "learning_rate": 0.1, "momentum": 0.0, "grad_clip_norm": 0.0, **optimizer})
  config.schedule.name = "constant"
  return config


def param_count(entry: registry.Entry) -> int:
  """Parameters of `entry`'s model at its counted image size and classes; shapes only, nothing is allocated."""
  size, classes = entry.params_at
  model = models.build(entry.name, num_classes=classes)
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))
