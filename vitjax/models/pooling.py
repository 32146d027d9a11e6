"""Max pooling whose CPU gradient is elementwise work on the input's stride phases.

XLA's CPU backend runs the gradient of `lax.reduce_window` max (select-and-scatter) as index arithmetic over the
whole padded input: 43 ms at 16x16x64 (batch 128) against 6 ms here; a 1-3% faster train step (RESULTS.md). Here
the forward pass is the maximum over the window's taps, each a unit-stride slice of one stride phase of the padded input
(`convolution.stride_phases`), and the gradient goes to the first tap, in row-major order, that holds the maximum,
as it does for `lax.reduce_window` and torch. Other backends, and `convolution.portable()`, keep `nn.max_pool`.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models import convolution

Array = jax.Array


def max_pool(
  x: Array, window_shape: tuple[int, int], strides: tuple[int, int], padding: convolution.Padding = "VALID"
) -> Array:
  """`nn.max_pool` over NHWC `x`, called as it is (padding "SAME", "VALID" or (low, high) pairs, with -inf)."""
  pads = convolution.explicit_padding(x.shape[1:3], window_shape, strides, padding)
  if not convolution.cpu_paths():
    if all(low < k and high < k for (low, high), k in zip(pads, window_shape)):
      # Edge values in place of -inf give the same maxima (a window over padding holds the edge it repeats), and
      # export as plain copies: an int8 TFLite pad with -inf fails to prepare in XNNPACK.
      x, pads = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode="edge"), "VALID"
    return nn.max_pool(x, window_shape, strides=strides, padding=pads)
  return _max_pool(x, tuple(window_shape), tuple(strides), pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: Array, window: tuple[int, int], strides: tuple[int, int], pads: Sequence[tuple[int, int]]) -> Array:
  return _max_pool_forward(x, window, strides, pads)[0]


def _max_pool_forward(x, window, strides, pads):
  out_shape = convolution.output_shape(x.shape[1:3], window, strides, pads)
  phases = convolution.stride_phases(x, window, strides, pads, out_shape, -jnp.inf)
  views = [convolution.phase_view(phases, tap, strides, out_shape) for tap in _taps(window)]
  out = functools.reduce(jnp.maximum, views)
  index = jnp.int8 if len(views) <= 128 else jnp.int32
  first = functools.reduce(  # The first tap holding the maximum: the chain runs from the last tap back.
    lambda later, tap: jnp.where(views[tap] == out, index(tap), later), reversed(range(len(views))), index(0)
  )
  return out, (first, phases.shape, x.shape)


def _max_pool_backward(window, strides, pads, residuals, dy):
  first, phases_shape, x_shape = residuals
  sh, sw, _, rows, cols, _ = phases_shape
  (oh, ow), placed = first.shape[1:3], {}
  for t, (i, j) in enumerate(_taps(window)):
    edges = ((0, 0, 0), (i // sh, rows - oh - i // sh, 0), (j // sw, cols - ow - j // sw, 0), (0, 0, 0))
    grad = jax.lax.pad(jnp.where(first == t, dy, 0.0).astype(dy.dtype), jnp.asarray(0.0, dy.dtype), edges)
    placed[i % sh, j % sw] = placed[i % sh, j % sw] + grad if (i % sh, j % sw) in placed else grad
  zeros = jnp.zeros(phases_shape[2:], dy.dtype)
  dphases = jnp.stack([jnp.stack([placed.get((a, b), zeros) for b in range(sw)]) for a in range(sh)])
  return (convolution.merge_phases(dphases, x_shape, pads),)


def _taps(window: tuple[int, int]) -> list[tuple[int, int]]:
  """The window's offsets in row-major order, the order in which ties go to the first."""
  return [(i, j) for i in range(window[0]) for j in range(window[1])]


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)
