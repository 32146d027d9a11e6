"""Between a model's internal grids and the image: token sequences as patch grids, coarse maps at pixel size."""

import math

import jax


def prefix_tokens(model) -> int:
  """Tokens before the patch tokens, as the model says (a ViT's class token and registers, DeiT's class and
  distillation tokens); none for a model without them (a conv net)."""
  return getattr(model, "prefix_tokens", 0)


def readout_tokens(model) -> tuple[int, ...]:
  """The prefix tokens the model's head reads (a ViT's class token, DeiT's two), () when it pools the patches."""
  return tuple(getattr(model, "readout_tokens", ()))


def grid_shape(num_patches: int, image_shape: tuple[int, ...]) -> tuple[int, int]:
  """(rows, columns) of a patch grid of `num_patches` tokens on an image of `image_shape`: patches are square, so
  the grid has the image's aspect ratio."""
  height, width = image_shape[:2]
  rows = round(math.sqrt(num_patches * height / width))
  if rows < 1 or num_patches % rows or abs(num_patches // rows * height - rows * width) > width:
    raise ValueError(f"{num_patches} tokens form no patch grid of a {height}x{width} image.")
  return rows, num_patches // rows


def as_grid(activation: jax.Array, image_shape: tuple[int, ...], prefix: int) -> jax.Array:
  """One image's feature map as [rows, columns, channels]: a conv map as it is, a token sequence [T, C] without its
  `prefix` tokens, laid out as the patch grid."""
  if activation.ndim == 3:
    return activation
  if activation.ndim != 2:
    raise ValueError(f"Expected a feature map [H, W, C] or tokens [T, C], got shape {activation.shape}.")
  patches = activation[prefix:]
  return patches.reshape(*grid_shape(patches.shape[0], image_shape), patches.shape[-1])


def upsample(grid_map: jax.Array, image_shape: tuple[int, ...]) -> jax.Array:
  """A coarse map [h, w] at the image's size [H, W], bilinearly (each value at its cell's centre)."""
  return jax.image.resize(grid_map, tuple(image_shape[:2]), method="linear")
