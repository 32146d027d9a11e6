"""Layers shared by several architectures: drop-path and a CPU-friendly convolution."""

from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
Padding = Union[str, Sequence[tuple[int, int]]]


class DropPath(nn.Module):
    """Stochastic depth: zeroes a residual branch per example with probability `rate`.

    Survivors are scaled by 1 / (1 - rate) so the expected output equals the input.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


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

    1x1 kernels run as an einsum (strided ones as a slice first): on CPU that is several
    times faster than `lax.conv`, above all for the weight gradient. `standardize`, when
    given, maps the stored kernel to the one used (weight-standardised convolutions).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Padding = "SAME"
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    standardize: Optional[Callable[[Array], Array]] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
        if self.standardize is not None:
            kernel = self.standardize(kernel)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if (kh, kw) == (1, 1) and _is_zero_padding(self.padding):
            sh, sw = self.strides
            y = jnp.einsum("nhwc,cd->nhwd", x[:, ::sh, ::sw], kernel[0, 0])
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, window_strides=self.strides, padding=self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
        return y


def _is_zero_padding(padding: Padding) -> bool:
    """True when a 1x1 convolution with this padding adds no border (SAME and VALID both do not)."""
    if isinstance(padding, str):
        return padding in ("SAME", "VALID")
    return all(lo == 0 and hi == 0 for lo, hi in padding)
