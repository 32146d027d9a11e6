"""Layers shared by several architectures: drop-path, a CPU-friendly convolution, BatchNorm and the classifier head."""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import ConfigError
from vitjax.models.convolution import column_sum, conv2d

Array = jax.Array
Dtype = Any
Padding = str | Sequence[tuple[int, int]]


# erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (beyond, +-1 in float32): the rational approximation of Eigen's and XLA's
# float32 erf, highest power first.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)  # fmt: skip
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)  # fmt: skip


def erf(x: Array) -> Array:
  """erf to float32 precision in plain arithmetic (clamp, multiply, add, divide): what `lax.erf` computes, in ops
  that every exporter converts (`lax.erf` reaches TFLite as a composite it cannot read, `lax.erfc` as terms that
  overflow to inf * 0 = NaN in ONNX)."""
  x = jnp.clip(x, -4.0, 4.0)
  x2 = x * x
  p, q = functools.reduce(lambda acc, c: acc * x2 + c, _ERF_P), functools.reduce(lambda acc, c: acc * x2 + c, _ERF_Q)
  return x * p / q


def gelu(x: Array, approximate: bool = False) -> Array:
  """GELU, by default the exact x/2 (1 + erf(x / sqrt 2)) of timm (through `erf`, so that it exports); with
  `approximate` the tanh form of vit_jax and big_vision."""
  if approximate:
    return nn.gelu(x, approximate=True)
  return 0.5 * x * (1.0 + erf(x * np.sqrt(0.5).astype(x.dtype)))


class Layer(nn.Module):
  """The base of the modules here that compute in `dtype` (parameters stay float32); keyword-only, so that it
  follows each module's own fields."""

  dtype: Dtype = dataclasses.field(default=jnp.float32, kw_only=True)


class DropPath(nn.Module):
  """Stochastic depth: zeroes a residual branch per example with probability `rate`.

  Survivors are scaled by 1 / (1 - rate) so the expected output equals the input.
  """

  rate: float | Array  # An array when the rate is traced (per-block rates of scanned ViT blocks).

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if deterministic or (isinstance(self.rate, float | int) and self.rate == 0.0):
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def stage_drop_rates(last_rate: float, depths: Sequence[int]) -> list[list[float]]:
  """Each stage's per-block drop-path rates: rising linearly from 0 to `last_rate` over all blocks in turn."""
  rates = np.linspace(0.0, last_rate, sum(depths)).tolist()
  return [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(len(depths))]


def standardize_kernel(kernel: Array, *, eps: float, eps_on_std: bool) -> Array:
  """Weight standardisation: each output filter to zero mean, unit variance over (h, w, in).

  The public releases differ in where epsilon goes: vit_jax's hybrid ResNet divides by
  `std + eps`, the BiT paper code by `sqrt(var + eps)`; `eps_on_std` picks the first.
  """
  kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  var = jnp.mean(jnp.square(kernel), axis=(0, 1, 2), keepdims=True)
  if eps_on_std:
    return kernel / (jnp.sqrt(var) + eps)
  return kernel / jnp.sqrt(var + eps)


class Conv(nn.Module):
  """2-D convolution with the parameters of `nn.Conv` (`kernel` (kh, kw, in, out), `bias`).

  `convolution.conv2d` picks the kernel by shape: 1x1 ones as a matmul, small maps on CPU as shifted-slice
  matmuls, the rest `lax.conv`. `standardize`, when given, maps the stored kernel to the one used
  (weight-standardised convolutions).
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  standardize: Callable[[Array], Array] | None = None
  # Grouped convolution: kernel (kh, kw, in // groups, out); in = out = groups is a depthwise convolution.
  feature_group_count: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = self.kernel_size
    in_per_group = x.shape[-1] // self.feature_group_count
    kernel = self.param("kernel", self.kernel_init, (kh, kw, in_per_group, self.features), jnp.float32)
    if self.standardize is not None:
      kernel = self.standardize(kernel)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = conv2d(x, kernel, strides=self.strides, padding=self.padding, groups=self.feature_group_count)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(x: Array, scale: Array, bias: Array, eps: float) -> tuple[Array, Array, Array]:
  """Batch-statistics normalisation of x (rows, channels): (y, batch mean, biased batch variance)."""
  return _batch_norm_train_fwd(x, scale, bias, eps)[0]


def _batch_norm_train_fwd(x, scale, bias, eps):
  rows = x.shape[0]
  mean = column_sum(x) / rows
  var = jnp.maximum(column_sum(x, x) / rows - jnp.square(mean), 0.0)
  inv = jax.lax.rsqrt(var + eps)
  x_hat = (x - mean) * inv
  return (x_hat * scale + bias, mean, var), (x_hat, inv, scale)


def _batch_norm_train_bwd(eps, residuals, cotangents):
  # The statistics only feed the running averages: their cotangents are ignored.
  del eps
  x_hat, inv, scale = residuals
  dy = cotangents[0]
  dbias = column_sum(dy)
  dscale = column_sum(dy, x_hat)
  dx = (scale * inv) * (dy - (dbias + x_hat * dscale) / x_hat.shape[0])
  return dx, dscale, dbias


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last, with `nn.BatchNorm`'s variables (`scale`, `bias`; `batch_stats`
  `mean`, `var`) and update rule (biased batch variance, `momentum` weight on the old average).

  Statistics and their gradients are computed in float32 as matmuls with a ones vector (`convolution.column_sum`):
  on CPU this made the ResNet-50 train step markedly faster than `nn.BatchNorm`.
  """

  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    if self.use_running_average:  # One multiply-add per element, on x's own shape: nothing for exporters to reshape.
      multiplier = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale
      return (x.astype(jnp.float32) * multiplier + (bias - ra_mean.value * multiplier)).astype(self.dtype)
    y, mean, var = _batch_norm_train(x.reshape(-1, channels).astype(jnp.float32), scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.reshape(x.shape).astype(self.dtype)


class BlockStack(nn.Module):
  """A network stage: `depth` blocks `block(name=names.format(first_index + j))` applied in turn, `block` being
  the block class with its arguments bound; with `strides`, the first block gets them and the others 1."""

  block: Callable[..., nn.Module]
  depth: int
  strides: int | None = None
  names: str = "block{}"
  first_index: int = 0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for j in range(self.depth):
      strides = {} if self.strides is None else {"strides": self.strides if j == 0 else 1}
      x = self.block(**strides, name=self.names.format(self.first_index + j))(x)
    return x


def batch_norm(train: bool, *, name: str, dtype: Dtype, scale_init: Callable = nn.initializers.ones) -> BatchNorm:
  """torch's BatchNorm2d defaults: momentum 0.1 (0.9 on the old average here), epsilon 1e-5."""
  return BatchNorm(
    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, scale_init=scale_init, name=name
  )


def patch_embedding(features: int, patch: int, *, dtype: Dtype, name: str, kernel_init: Callable | None = None) -> Conv:
  """A patchify layer (ViT's patch embedding, ConvNeXt's stem and downsampling): a `patch` x `patch` convolution
  with stride `patch` and a bias; `kernel_init` None keeps `Conv`'s."""
  init = {} if kernel_init is None else {"kernel_init": kernel_init}
  return Conv(features, (patch, patch), (patch, patch), padding="VALID", use_bias=True, dtype=dtype, name=name, **init)


def check_patch_size(images: Array, patch: int) -> None:
  """A ConfigError unless the image height and width are multiples of `patch`."""
  if images.shape[1] % patch or images.shape[2] % patch:
    raise ConfigError(f"Image size {images.shape[1]}x{images.shape[2]} is not divisible by the patch size {patch}")


def forward_fields(module: nn.Module, *names: str) -> dict[str, Any]:
  """`module`'s fields `names` as keyword arguments, for a submodule that takes the same options."""
  return {name: getattr(module, name) for name in names}


def pre_logits(module: nn.Module, features: Array) -> Array:
  """`features` in float32, sown as `module`'s `intermediates/pre_logits` (what probes and explanations read)."""
  features = features.astype(jnp.float32)
  module.sow("intermediates", "pre_logits", features)
  return features


def zero_head(num_classes: int, bias_init: float, *, name: str = "head") -> nn.Dense:
  """The classifier layer: a zero kernel, so that every logit starts at `bias_init` whatever the features."""
  return nn.Dense(
    num_classes, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.constant(bias_init), name=name
  )


def classifier_head(
  module: nn.Module,
  features: Array,
  *,
  num_classes: int | None,
  bias_init: float,
  dropout_rate: float = 0.0,
  train: bool = False,
  head: Callable[[Array], Array] | None = None,
) -> Array:
  """How every family ends, called inside `module`'s compact method: the pre-logits `features` (sown), returned
  as they are when `num_classes` is 0 or None, else the logits of dropout then `head` (default: `zero_head`)."""
  features = pre_logits(module, features)
  if not num_classes:
    return features
  if dropout_rate:
    features = nn.Dropout(dropout_rate)(features, deterministic=not train)
  return (head or zero_head(num_classes, bias_init))(features)


class Classifier(Layer):
  """The base of every family's classifier module: the options every family takes, keyword-only so that they follow
  the family's own fields, and `classify`, how its `__call__` ends."""

  head_bias_init: float = dataclasses.field(default=0.0, kw_only=True)

  def classify(self, features: Array, dropout_rate: float = 0.0, train: bool = False, **kwargs: Any) -> Array:
    """`classifier_head` with this module's `num_classes` and `head_bias_init`."""
    return classifier_head(
      self,
      features,
      num_classes=self.num_classes,
      bias_init=self.head_bias_init,
      dropout_rate=dropout_rate,
      train=train,
      **kwargs,
    )
