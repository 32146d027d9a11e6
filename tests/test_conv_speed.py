"""The convolution paths chosen by shape (vitjax/models/convolution.py) compute what `lax.conv` computes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import cpu_only
from vitjax.models import convolution, layers


def lax_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def value_and_grads(conv, x, kernel):
  """Output, and gradients of a non-linear loss by input and kernel (so every output element matters)."""
  out = conv(x, kernel)
  dx, dk = jax.grad(
    lambda x, k: jnp.sum(jnp.sin(conv(x, k)) * jnp.arange(out.size).reshape(out.shape) / out.size), (0, 1)
  )(x, kernel)
  return out, dx, dk


def random(shape, seed):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize(
  "size, window, stride, padding",
  [
    (1, 3, 1, ((1, 1), (1, 1))),  # ResNet-18 at 32 pixels, stage 4: only the centre tap reads the input.
    (2, 3, 2, ((1, 1), (1, 1))),  # The strided 2x2 -> 1x1 convolution: the top and left taps read padding only.
    (5, 3, 2, "SAME"),  # XLA's asymmetric SAME padding of a strided convolution.
    (3, 5, 2, ((2, 2), (2, 2))),  # A larger window on a map smaller than it.
  ],
)
def test_shifted_matmul_equals_lax_conv_with_gradients(size, window, stride, padding):
  x, kernel = random((2, size, size + 1, 3), 0), random((window, window, 3, 4), 1)
  strides = (stride, stride)
  pads = convolution.explicit_padding(x.shape[1:3], (window, window), strides, padding)
  shifted = lambda x, k: convolution.shifted_matmul_conv(x, k, strides=strides, pads=pads)  # noqa: E731
  reference = lambda x, k: lax_conv(x, k, strides, padding)  # noqa: E731
  ours, ref = jax.jit(lambda x, k: [value_and_grads(f, x, k) for f in (shifted, reference)])(x, kernel)
  for a, b in zip(ours, ref):
    assert a.shape == b.shape
    # The same sums in another order: float32 rounding only (against float64, ours was the closer one).
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)
  assert np.abs(ours[2]).max() > 1e-2


def primitives(fn, *args) -> set[str]:
  return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).eqns}


@cpu_only
def test_small_maps_take_the_matmul_path_on_cpu_and_large_ones_lax_conv():
  kernel = jnp.zeros((3, 3, 8, 8))
  conv = lambda x: convolution.conv2d(x, kernel, strides=(1, 1), padding="SAME")  # noqa: E731
  assert "conv_general_dilated" not in primitives(conv, jnp.zeros((2, 2, 2, 8)))  # 4 output positions.
  assert "conv_general_dilated" in primitives(conv, jnp.zeros((2, 3, 2, 8)))  # 6.
  grouped = lambda x: convolution.conv2d(x, kernel[..., :2, :], strides=(1, 1), padding="SAME", groups=4)  # noqa: E731
  assert "conv_general_dilated" in primitives(grouped, jnp.zeros((2, 2, 2, 8)))
  depthwise = lambda x: convolution.conv2d(x, kernel[..., :1, :], strides=(1, 1), padding="SAME", groups=8)  # noqa: E731
  assert "conv_general_dilated" not in primitives(depthwise, jnp.zeros((2, 9, 9, 8)))
  patchify = lambda x: convolution.conv2d(x, jnp.zeros((16, 16, 3, 8)), strides=(16, 16), padding="VALID")  # noqa: E731
  assert "conv_general_dilated" in primitives(patchify, jnp.zeros((2, 32, 32, 3)))  # A ViT's patch embedding.


def test_conv_layer_equals_flax_conv():
  # The layer end to end on a small map (the matmul path; ResNet-18's stage 3 at 32 pixels), bias included.
  x = random((2, 2, 2, 8), 2)
  conv = layers.Conv(8, (3, 3), (1, 1), padding="SAME", use_bias=True)
  reference = nn.Conv(8, (3, 3), (1, 1), padding="SAME")
  params = jax.tree.map(lambda a: random(a.shape, 3), jax.eval_shape(conv.init, jax.random.key(0), x))

  @jax.jit
  def outputs_and_grads(params, x):
    loss = lambda module, p, x: jnp.sum(jnp.sin(module.apply(p, x)))  # noqa: E731
    return [(m.apply(params, x), jax.grad(loss, (1, 2))(m, params, x)) for m in (conv, reference)]

  ours, ref = outputs_and_grads(params, x)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert np.abs(ours[1][0]["params"]["kernel"]).max() > 1e-2


@pytest.mark.parametrize(
  "size, window, stride, padding",
  [
    (7, 3, 1, "SAME"),  # MobileNet's and EfficientNet's depthwise 3x3.
    (8, 3, 2, "SAME"),  # Strided, with XLA's asymmetric SAME padding.
    (6, 7, 1, ((3, 3), (3, 3))),  # ConvNeXt's 7x7 on a map smaller than the window's reach.
    (9, 5, 2, ((2, 2), (2, 2))),  # EfficientNet's strided 5x5 with timm's symmetric padding.
  ],
)
def test_depthwise_shifted_slices_equal_grouped_lax_conv_with_gradients(size, window, stride, padding):
  x, kernel = random((2, size, size + 1, 6), 4), random((window, window, 1, 6), 5)
  strides = (stride, stride)
  pads = convolution.explicit_padding(x.shape[1:3], (window, window), strides, padding)
  shifted = lambda x, k: convolution.depthwise_conv(x, k[:, :, 0], strides, pads)  # noqa: E731
  reference = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
    x, k, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6
  )
  ours, ref = jax.jit(lambda x, k: [value_and_grads(f, x, k) for f in (shifted, reference)])(x, kernel)
  for a, b in zip(ours, ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)
  assert np.abs(ours[2]).max() > 1e-2


def test_portable_traces_every_convolution_as_lax_conv():
  # What the exporters trace: TFLite and ONNX turn lax.conv into their own (int8-quantisable) convolution ops.
  # Traces are cached per function, so each trace here is of a fresh function (as the exporters' are).
  conv = functools.partial(convolution.conv2d, strides=(1, 1), padding="SAME")
  small = lambda: lambda x: conv(x, jnp.zeros((3, 3, 8, 8)))  # noqa: E731
  depthwise = lambda: lambda x: conv(x, jnp.zeros((3, 3, 1, 8)), groups=8)  # noqa: E731
  with convolution.portable():
    assert "conv_general_dilated" in primitives(small(), jnp.zeros((2, 2, 2, 8)))
    assert "conv_general_dilated" in primitives(depthwise(), jnp.zeros((2, 9, 9, 8)))
  assert "conv_general_dilated" not in primitives(small(), jnp.zeros((2, 2, 2, 8)))
  assert "conv_general_dilated" not in primitives(depthwise(), jnp.zeros((2, 9, 9, 8)))


@pytest.mark.parametrize("shape", [(2, 4, 4, 8), (3, 5, 6), (3, 5, 7)])
def test_materialized_is_the_identity_and_survives_compilation(shape):
  # Exact (the same bits) whatever the size's divisors; and for even sizes the identity matmul must reach the
  # compiled program, or XLA fuses what made `x` into each reader again (it simplifies a 1x1 identity away).
  x = random(shape, 6)
  same = jax.jit(convolution.materialized)
  np.testing.assert_array_equal(same(x), x)
  assert (" dot(" in same.lower(x).compile().as_text()) == (x.size % 2 == 0)
