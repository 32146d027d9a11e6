"""2-D convolution kernels chosen by shape: 1x1 as a matmul; on CPU, small feature maps as shifted-slice matmuls
and depthwise convolutions as sums of shifted slices.

XLA's CPU convolution is fast on large maps but slow on small ones (a 3x3 convolution on a 2x2 map with 256
channels ran at about 4% of the matmul peak, its input gradient as slowly), and slower still grouped. The paths here
compute the same function as `lax.conv_general_dilated` (the same sums in another order) as large matmuls or fused
elementwise work instead; other backends keep `lax.conv` wherever the choice matters.
"""

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]

# Output maps of at most this many positions run as shifted-slice matmuls on CPU: XLA's convolution ran a 3x3 on a
# 2x2 map (batch 128, 256 channels) at 7 GFLOP/s against 150 as a matmul; from 4x4 up its own is faster.
SMALL_MAP_POSITIONS = 4
# Kernels of more taps keep lax.conv: a ViT's patch embedding (16x16 taps on a 2x2 output) and large stems
# measured no faster as shifted matmuls.
MAX_SHIFTED_TAPS = 9

_portable = contextvars.ContextVar("portable_convolutions", default=False)


@contextlib.contextmanager
def portable() -> Iterator[None]:
  """Within it, every convolution traces as `lax.conv` (1x1 ones too: a matmul over a reshaped batch of unknown size
  exports as shape arithmetic), the op exporters map to their own convolutions (TFLite's DEPTHWISE_CONV_2D, int8
  kernels, ONNX Conv that onnxruntime fuses with what follows), whatever backend traces it. JAX caches traces per
  function, so trace a function here that was not traced outside (the exporters' serving function is new)."""
  token = _portable.set(True)
  try:
    yield
  finally:
    _portable.reset(token)


def cpu_paths() -> bool:
  """True where the CPU-specific paths apply: the CPU backend, outside `portable()`. Read at trace time."""
  return jax.default_backend() == "cpu" and not _portable.get()


def conv2d(x: Array, kernel: Array, *, strides: tuple[int, int], padding: Padding, groups: int = 1) -> Array:
  """NHWC input, HWIO kernel -> NHWC output, as `lax.conv_general_dilated` computes it, by the fastest path known."""
  kh, kw = kernel.shape[:2]
  pads = explicit_padding(x.shape[1:3], (kh, kw), strides, padding)
  if groups == 1 and (kh, kw) == (1, 1) and all(p == (0, 0) for p in pads) and not _portable.get():
    x = subsample(x, strides)
    return (x.reshape(-1, x.shape[-1]) @ kernel[0, 0]).reshape(*x.shape[:-1], kernel.shape[-1])
  if groups == 1 and uses_shifted_matmul(x.shape, (kh, kw), strides, pads):
    return shifted_matmul_conv(x, kernel, strides=strides, pads=pads)
  if groups == x.shape[-1] == kernel.shape[-1] and cpu_paths():
    return depthwise_conv(x, kernel[:, :, 0], strides, pads)
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=pads,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
  )


def subsample(x: Array, strides: tuple[int, int]) -> Array:
  """`x[:, ::sh, ::sw]` of an NHWC batch, as a strided `lax.slice`: indexing lowers to a gather, which TFLite cannot
  convert once the batch size is left open by an exporter."""
  if tuple(strides) == (1, 1):
    return x
  return jax.lax.slice(x, (0,) * x.ndim, x.shape, (1, *strides, 1))


def explicit_padding(
  spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Padding
) -> tuple[tuple[int, int], ...]:
  """(low, high) padding per spatial axis, with "SAME" and "VALID" resolved as `lax.conv` resolves them."""
  if isinstance(padding, str):
    return tuple(jax.lax.padtype_to_pads(tuple(spatial), tuple(window), tuple(strides), padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def uses_shifted_matmul(
  x_shape: Sequence[int], window: Sequence[int], strides: Sequence[int], pads: Sequence[tuple[int, int]]
) -> bool:
  """True on CPU for outputs of at most `SMALL_MAP_POSITIONS` positions of kernels of at most `MAX_SHIFTED_TAPS`
  taps; the backend is read at trace time, so a function traced for another backend keeps `lax.conv`."""
  out = output_shape(x_shape[1:3], window, strides, pads)
  small = out[0] * out[1] <= SMALL_MAP_POSITIONS and window[0] * window[1] <= MAX_SHIFTED_TAPS
  return small and cpu_paths()


def shifted_matmul_conv(x: Array, kernel: Array, *, strides: tuple[int, int], pads: Sequence[tuple[int, int]]) -> Array:
  """Convolution as one matmul: the kernel taps' strided views of the padded input, side by side on channels
  (im2col), times the kernel as a (taps * in, out) matrix. Taps that read only padding for every output position
  are left out (their weight gradient is zero all the same): on a 1x1 map a padded 3x3 convolution is a 1x1 one.
  """
  n, h, w, _ = x.shape
  (kh, kw), (sh, sw) = kernel.shape[:2], strides
  (top, _), (left, _) = pads
  oh, ow = output_shape((h, w), (kh, kw), strides, pads)
  rows, cols = _live_taps(h, oh, kh, sh, top), _live_taps(w, ow, kw, sw, left)
  kernel = kernel[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
  x = _pad(x, pads, 0.0)
  views = [_view(x, (i, j), (oh, ow), strides) for i in rows for j in cols]
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  out = patches.reshape(n * oh * ow, -1) @ kernel.reshape(-1, kernel.shape[-1])
  return out.reshape(n, oh, ow, kernel.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x: Array, kernel: Array, strides: tuple[int, int], pads: Sequence[tuple[int, int]]) -> Array:
  """Depthwise convolution (`kernel` (kh, kw, channels)) as the sum over taps of the tap's strided view of the padded
  input times that tap's per-channel weights: elementwise work that XLA's CPU backend fuses (its grouped `lax.conv`
  left MobileNet v2's train step 3.8x slower). The weight gradient sums over rows with `column_sum`."""
  return _depthwise_forward(x, kernel, strides, pads)[0]


def _depthwise_forward(x, kernel, strides, pads):
  (kh, kw), out_shape = kernel.shape[:2], output_shape(x.shape[1:3], kernel.shape[:2], strides, pads)
  phases = stride_phases(x, (kh, kw), strides, pads, out_shape)
  views = [phase_view(phases, (i, j), strides, out_shape) for i in range(kh) for j in range(kw)]
  out = sum(view * kernel[t // kw, t % kw] for t, view in enumerate(views))
  return out, (phases, kernel, x.shape)


def _depthwise_training_forward(x, kernel, strides, pads):
  """The forward under differentiation, its output `materialized`: training's BatchNorm reads it twice (statistics,
  then normalisation) and would otherwise recompute the sum over taps for each. Inference keeps it fused."""
  out, residuals = _depthwise_forward(x, kernel, strides, pads)
  return materialized(out), residuals


def _depthwise_backward(strides, pads, residuals, dy):
  phases, kernel, x_shape = residuals
  kh, kw = kernel.shape[:2]
  dy = materialized(dy)
  taps = [_tap_gradient(phase_view(phases, (i, j), strides, dy.shape[1:3]), dy) for i in range(kh) for j in range(kw)]
  dx = _depthwise_input_gradient(dy, kernel, x_shape, strides, pads)
  return dx, jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)


def _tap_gradient(view: Array, dy: Array, group: int = 8) -> Array:
  """One tap's kernel gradient, sum(view * dy) per channel: the product summed over runs of `group` rows in the
  fusion that makes it, so that only an eighth of it is written out for `column_sum` (EfficientNet-B0 trained 1.2x
  faster)."""
  rows = (view * dy).reshape(-1, dy.shape[-1]).astype(jnp.float32)
  if rows.shape[0] % group == 0:
    rows = rows.reshape(-1, group, rows.shape[-1]).sum(axis=1)
  return column_sum(rows)


def stride_phases(
  x: Array,
  window: Sequence[int],
  strides: Sequence[int],
  pads: Sequence[tuple[int, int]],
  out_shape: Sequence[int],
  value: float = 0.0,
) -> Array:
  """The padded input split by stride phase, (sh, sw, n, rows, cols, c): phase (a, b) holds the padded input's rows
  a, a + sh, ... and columns b, b + sw, ..., so that each tap reads a unit-stride slice of one phase (XLA wrote every
  strided view out on its own). With unit strides it is the padded input (padded with `value`)."""
  (sh, sw), (top, _), (left, _) = strides, *pads
  rows, cols = (o + (k - 1) // s for o, k, s in zip(out_shape, window, strides))
  n, h, w, c = x.shape
  edges = ((0, 0, 0), (top, rows * sh - h - top, 0), (left, cols * sw - w - left, 0), (0, 0, 0))
  padded = jax.lax.pad(x, jnp.asarray(value, x.dtype), edges)
  return padded.reshape(n, rows, sh, cols, sw, c).transpose(2, 4, 0, 1, 3, 5)


def phase_view(phases: Array, tap: tuple[int, int], strides: Sequence[int], out_shape: Sequence[int]) -> Array:
  """What kernel offset `tap` reads for each of the `out_shape` output positions, from `stride_phases`."""
  (i, j), (sh, sw), (oh, ow) = tap, strides, out_shape
  return phases[i % sh, j % sw, :, i // sh : i // sh + oh, j // sw : j // sw + ow]


def merge_phases(phases: Array, x_shape: Sequence[int], pads: Sequence[tuple[int, int]]) -> Array:
  """The inverse of `stride_phases` for gradients: (sh, sw, n, rows, cols, c) back to the (n, h, w, c) input, the
  padding cut off and input rows or columns that no tap reads (cut off by `stride_phases`) restored as zeros."""
  sh, sw, n, rows, cols, c = phases.shape
  (top, _), (left, _) = pads
  padded = phases.transpose(2, 3, 0, 4, 1, 5).reshape(n, rows * sh, cols * sw, c)
  edges = ((0, 0, 0), (-top, x_shape[1] + top - rows * sh, 0), (-left, x_shape[2] + left - cols * sw, 0), (0, 0, 0))
  return jax.lax.pad(padded, jnp.asarray(0.0, padded.dtype), edges)


def _depthwise_input_gradient(dy, kernel, x_shape, strides, pads):
  """The input gradient as a stride-1 depthwise convolution of `dy`, spread out by the strides (zeros between its
  positions) and padded so that the flipped kernel lines up: one fused sum of shifted slices, like the forward."""
  (kh, kw), (sh, sw) = kernel.shape[:2], strides
  (top, _), (left, _) = pads
  (h, w), (oh, ow) = x_shape[1:3], dy.shape[1:3]
  low_h, low_w = kh - 1 - top, kw - 1 - left
  high_h, high_w = h + kh - 1 - low_h - (oh - 1) * sh - 1, w + kw - 1 - low_w - (ow - 1) * sw - 1
  spread = jax.lax.pad(
    dy, jnp.asarray(0.0, dy.dtype), ((0, 0, 0), (low_h, high_h, sh - 1), (low_w, high_w, sw - 1), (0, 0, 0))
  )
  return _depthwise_forward(spread, kernel[::-1, ::-1], (1, 1), ((0, 0), (0, 0)))[0]


depthwise_conv.defvjp(_depthwise_training_forward, _depthwise_backward)


def materialized(x: Array) -> Array:
  """x, written to memory once: an identity matmul on rows of up to 16 elements, which XLA's CPU backend never fuses
  into what reads it (exact for finite values). A depthwise convolution's gradient reads its incoming gradient at
  every tap; left fused, the BatchNorm, activation and squeeze-excitation gradients that make it were recomputed at
  each, 2 * taps times per element. With it here and on the forward's output, EfficientNet-B0's train step ran 1.45x
  faster. XLA simplifies a 1x1 identity away, so an x of odd size stays fused."""
  width = next(w for w in (16, 8, 4, 2, 1) if x.size % w == 0)
  identity = jnp.eye(width, dtype=x.dtype)
  return jnp.matmul(x.reshape(-1, width), identity, precision=jax.lax.Precision.HIGHEST).reshape(x.shape)


def column_sum(x: Array, y: Array | None = None) -> Array:
  """Sum of x (or of the product x * y) over every axis but the last, in float32, as a matmul with a ones vector.

  On CPU, XLA's reductions over the major axes run at about 1 GB/s; the same sum as a matrix-vector product runs
  on the matmul library at over 10 GB/s. Batch statistics and weight gradients are such reductions.
  """
  rows = (x if y is None else x * y).reshape(-1, x.shape[-1]).astype(jnp.float32)
  return jnp.ones((rows.shape[0],), jnp.float32) @ rows


def output_shape(spatial, window, strides, pads) -> tuple[int, int]:
  """Output (height, width) of a convolution with these explicit paddings."""
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(spatial, window, strides, pads))


def _pad(x: Array, pads: Sequence[tuple[int, int]], value: float) -> Array:
  """x padded on its two spatial axes by `pads` with `value`."""
  (top, bottom), (left, right) = pads
  return jax.lax.pad(x, jnp.asarray(value, x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))


def _view(x: Array, tap: tuple[int, int], out: Sequence[int], strides: Sequence[int]) -> Array:
  """What kernel offset `tap` reads of padded NHWC `x` for each of the `out` output positions."""
  (i, j), (oh, ow), (sh, sw) = tap, out, strides
  return jax.lax.slice(
    x, (0, i, j, 0), (x.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, x.shape[3]), (1, sh, sw, 1)
  )


def _live_taps(size: int, out: int, window: int, stride: int, low: int) -> range:
  """The kernel offsets along one axis that read at least one input element (not padding) for some output."""
  live = [i for i in range(window) if any(low <= i + stride * o < low + size for o in range(out))]
  return range(live[0], live[-1] + 1) if live else range(window)
