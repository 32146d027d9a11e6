"""Max pooling on stride phases (vitjax/models/pooling.py) computes `nn.max_pool` and its gradient exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import cpu_only
from vitjax.models import convolution, pooling


@pytest.mark.parametrize(
  "shape, window, stride, padding",
  [
    ((3, 16, 16, 4), 3, 2, ((1, 1), (1, 1))),  # ResNet's stem pool.
    ((3, 9, 10, 4), 3, 2, "SAME"),  # XLA's asymmetric SAME padding on odd sizes.
    ((3, 9, 10, 4), 3, 2, "VALID"),  # AlexNet's and BiT's pool: the last input row is read by no window.
    ((3, 9, 10, 4), 2, 2, "VALID"),  # VGG's.
    ((3, 7, 7, 4), 3, 1, "SAME"),  # Overlapping windows at unit stride.
  ],
)
def test_max_pool_equals_nn_max_pool_with_gradients_and_ties(shape, window, stride, padding):
  # After a ReLU a third of the inputs are zero, so whole windows tie: the gradient goes to the first maximum.
  x = jnp.round(jax.nn.relu(jax.random.normal(jax.random.key(0), shape)) * 4) / 4
  windows, strides = (window, window), (stride, stride)
  weights = jax.random.normal(jax.random.key(1), nn.max_pool(x, windows, strides, padding).shape)

  def value_and_grad(pool):
    return jax.value_and_grad(lambda x: jnp.sum(pool(x, windows, strides=strides, padding=padding) * weights))(x)

  (ours, dours), (ref, dref) = value_and_grad(pooling.max_pool), value_and_grad(nn.max_pool)
  np.testing.assert_array_equal(ours, ref)
  np.testing.assert_allclose(dours, dref, rtol=1e-6, atol=1e-6)
  assert np.count_nonzero(dref) > 0


@cpu_only
def test_portable_max_pool_is_reduce_window():
  # Exporters map `reduce_window` max to their own pooling op (TFLite MAX_POOL_2D).
  def primitives(x):
    return {e.primitive.name for e in jax.make_jaxpr(lambda x: pooling.max_pool(x, (3, 3), (2, 2), "SAME"))(x).eqns}

  x = jnp.zeros((1, 8, 8, 2))
  with convolution.portable():
    assert "reduce_window_max" in primitives(x)
  assert "reduce_window_max" not in primitives(x)
