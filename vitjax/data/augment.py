"""RandAugment and AutoAugment on uint8 RGB images, with stateless randomness.

The image operations and magnitude mappings follow the TensorFlow TPU / big_vision implementation that published
ViT and EfficientNet results used (levels on a 0-10 scale, magnitudes above 10 extrapolate, empty pixels after
geometric ops filled with grey 128). Two deliberate differences: translation and cutout sizes are fractions of
the image (100 and 40 pixels at 224px) so the ops mean the same at any resolution, and posterize keeps at least
one bit. AutoAugment uses the ImageNet policy of the AutoAugment paper (Cubuk et al. 2018, 25 sub-policies).

Every random choice comes from ``tf.random.stateless_*`` keyed by the ``seed`` argument, so an image's
augmentation depends only on its seed: the same eagerly and inside ``tf.data``. Both are preprocessing ops too:
``randaugment(N, M)`` and ``autoaugment`` in a spec.
"""

import math
from collections.abc import Callable

import tensorflow as tf

from vitjax.data.preprocess import Op, image_op, register
from vitjax.errors import ConfigError

MAX_LEVEL = 10.0
FILL = 128  # Grey, for pixels that geometric ops move in from outside the image.

Augmentation = Callable[[tf.Tensor, float, tf.Tensor], tf.Tensor]


def _uniform(seed: tf.Tensor, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, minval=low, maxval=high)


def _randomly_negate(value: float, seed: tf.Tensor) -> tf.Tensor:
  return tf.where(_uniform(seed) < 0.5, -value, value)


def blend(image1: tf.Tensor, image2: tf.Tensor, factor) -> tf.Tensor:
  """``image1 + factor * (image2 - image1)``, clipped to uint8; factors above 1 extrapolate."""
  image1, image2 = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
  return tf.cast(tf.clip_by_value(image1 + factor * (image2 - image1), 0.0, 255.0), tf.uint8)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel so that its darkest pixel becomes 0 and its brightest 255."""
  image = tf.cast(image, tf.float32)
  low = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  high = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1.0), 1.0)
  offset = tf.where(high > low, low, 0.0)
  return tf.cast(tf.clip_by_value((image - offset) * scale, 0.0, 255.0), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram equalisation of each channel, as PIL's ImageOps.equalize."""

  def channel(values):
    values = tf.cast(values, tf.int32)
    histogram = tf.histogram_fixed_width(values, [0, 255], nbins=256)
    nonzero = tf.boolean_mask(histogram, histogram > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

    def equalized():
      lut = (tf.cumsum(histogram) + step // 2) // tf.maximum(step, 1)
      lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
      return tf.gather(lut, values)

    return tf.cast(tf.cond(step > 0, equalized, lambda: values), tf.uint8)

  return tf.stack([channel(image[..., c]) for c in range(3)], axis=-1)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  """Keeps the ``bits`` (clipped to 1..8) most significant bits of every value."""
  shift = tf.cast(8 - tf.clip_by_value(tf.cast(bits, tf.int32), 1, 8), tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  """Inverts every value at or above ``threshold``."""
  return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition, threshold: int = 128) -> tf.Tensor:
  """Adds ``addition`` (clipped to 0..255) to every value below ``threshold``."""
  added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255), tf.uint8)
  return tf.where(tf.cast(image, tf.int32) < threshold, added, image)


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL's Color (saturation): 0 gives grey, 1 the image, above 1 more saturated."""
  return blend(tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image)), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL's Contrast: blends with the mean grey level of the image."""
  mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
  return blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL's Brightness: blends with black."""
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL's Sharpness: blends with PIL's SMOOTH filter of the image (border pixels kept)."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32)[:, :, None, None] / 13.0
  kernel = tf.tile(kernel, [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1], "VALID")[0]
  smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0.0, 255.0), tf.uint8)
  inside = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  smooth = tf.where(inside, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
  return blend(smooth, image, factor)


def transform(image: tf.Tensor, matrix, *, fill: float = FILL, interpolation: str = "NEAREST") -> tf.Tensor:
  """Applies the projective ``matrix`` [a0, a1, a2, b0, b1, b2, c0, c1] mapping output to input coordinates."""
  matrix = tf.reshape(tf.cast(tf.stack(matrix), tf.float32), [1, 8])
  dtype = image.dtype
  images = tf.cast(image, tf.float32)[None] if interpolation == "BILINEAR" else image[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=images,
    transforms=matrix,
    output_shape=tf.shape(image)[:2],
    fill_value=tf.cast(fill, tf.float32),
    interpolation=interpolation,
    fill_mode="CONSTANT",
  )[0]
  if out.dtype != dtype:
    out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), dtype) if dtype == tf.uint8 else tf.cast(out, dtype)
  return tf.ensure_shape(out, image.shape)


def rotate(image: tf.Tensor, degrees, *, fill: float = FILL, interpolation: str = "NEAREST") -> tf.Tensor:
  """Rotates counter-clockwise by ``degrees`` about the image centre."""
  radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  height, width = (tf.cast(d, tf.float32) - 1.0 for d in tf.unstack(tf.shape(image)[:2]))
  cos, sin = tf.cos(radians), tf.sin(radians)
  x_offset = (width - (cos * width - sin * height)) / 2.0
  y_offset = (height - (sin * width + cos * height)) / 2.0
  return transform(image, [cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0], fill=fill, interpolation=interpolation)


def shear_x(image: tf.Tensor, level) -> tf.Tensor:
  return transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image: tf.Tensor, level) -> tf.Tensor:
  return transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])


def translate(image: tf.Tensor, dx, dy) -> tf.Tensor:
  """Moves the content by (dx, dy) pixels."""
  return transform(image, [1.0, 0.0, -dx, 0.0, 1.0, -dy, 0.0, 0.0])


def cutout(image: tf.Tensor, seed: tf.Tensor, half_size) -> tf.Tensor:
  """Fills a square of side ``2 * half_size`` at a uniformly random centre (clipped to the image) with grey."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  seeds = tf.random.experimental.stateless_split(seed, 2)
  cy = tf.random.stateless_uniform([], seeds[0], 0, height, tf.int32)
  cx = tf.random.stateless_uniform([], seeds[1], 0, width, tf.int32)
  rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
  inside = (rows >= cy - half_size) & (rows < cy + half_size) & (cols >= cx - half_size) & (cols < cx + half_size)
  return tf.where(inside[..., None], tf.constant(FILL, image.dtype), image)


def _scaled(level: tf.Tensor, maximum: float) -> tf.Tensor:
  """``level`` on the 0..MAX_LEVEL scale mapped linearly to 0..maximum."""
  return level / MAX_LEVEL * maximum


def _whole(value: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.floor(value), tf.int32)


def _enhance(level: tf.Tensor) -> tf.Tensor:
  return _scaled(level, 1.8) + 0.1


def _pixels(image: tf.Tensor, axis: int, level: tf.Tensor, at_224: float) -> tf.Tensor:
  """A size that is ``at_224`` pixels at full level for a 224-pixel side, scaled to this image's side."""
  return _scaled(level, at_224 / 224) * tf.cast(tf.shape(image)[axis], tf.float32)


# name -> fn(image, level, seed), ``level`` a float32 scalar tensor. Magnitude mappings as in the TPU
# implementation of RandAugment.
RANDAUGMENT_OPS: dict[str, Augmentation] = {
  "AutoContrast": lambda image, level, seed: autocontrast(image),
  "Equalize": lambda image, level, seed: equalize(image),
  "Invert": lambda image, level, seed: invert(image),
  "Rotate": lambda image, level, seed: rotate(image, _randomly_negate(_scaled(level, 30.0), seed)),
  "Posterize": lambda image, level, seed: posterize(image, _whole(_scaled(level, 4.0))),
  "Solarize": lambda image, level, seed: solarize(image, _whole(_scaled(level, 256.0))),
  "Color": lambda image, level, seed: color(image, _enhance(level)),
  "Contrast": lambda image, level, seed: contrast(image, _enhance(level)),
  "Brightness": lambda image, level, seed: brightness(image, _enhance(level)),
  "Sharpness": lambda image, level, seed: sharpness(image, _enhance(level)),
  "ShearX": lambda image, level, seed: shear_x(image, _randomly_negate(_scaled(level, 0.3), seed)),
  "ShearY": lambda image, level, seed: shear_y(image, _randomly_negate(_scaled(level, 0.3), seed)),
  "TranslateX": lambda image, level, seed: translate(
    image, _randomly_negate(_pixels(image, 1, level, 100.0), seed), 0.0
  ),
  "TranslateY": lambda image, level, seed: translate(
    image, 0.0, _randomly_negate(_pixels(image, 0, level, 100.0), seed)
  ),
  "Cutout": lambda image, level, seed: cutout(
    image, seed, _whole(tf.minimum(_pixels(image, 0, level, 40.0), _pixels(image, 1, level, 40.0)) + 0.5)
  ),
  "SolarizeAdd": lambda image, level, seed: solarize_add(image, _whole(_scaled(level, 110.0))),
}

# The AutoAugment paper's ImageNet policy: 25 sub-policies of two (op, probability, level) steps.
IMAGENET_POLICY = (
  (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
  (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
  (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
  (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
  (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
  (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
  (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
  (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
  (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
  (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
  (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
  (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
  (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
  (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
  (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
  (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
  (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
  (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
  (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
  (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
  (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
  (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
  (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
  (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
  (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)

# In the AutoAugment paper posterize keeps 4..8 bits (level 0..10), not RandAugment's 0..4.
AUTOAUGMENT_OPS: dict[str, Augmentation] = {
  **RANDAUGMENT_OPS,
  "Posterize": lambda image, level, seed: posterize(image, _whole(_scaled(level, 4.0)) + 4),
}


def _check_uint8_rgb(image: tf.Tensor, name: str) -> None:
  if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] != 3:
    raise ConfigError(
      f"{name} works on uint8 RGB images of shape [h, w, 3], got {image.dtype.name} "
      f"{image.shape}; place it before value_range/normalize and after to_rgb."
    )


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int = 2, magnitude: float = 10.0) -> tf.Tensor:
  """RandAugment (Cubuk et al. 2019): ``num_layers`` ops drawn uniformly from 16, each at ``magnitude``."""
  _check_uint8_rgb(image, "randaugment")
  ops = list(RANDAUGMENT_OPS.values())
  level = tf.constant(magnitude, tf.float32)

  def layer(index, current):
    choice_seed, op_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, index), 2)
    )
    choice = tf.random.stateless_uniform([], choice_seed, 0, len(ops), tf.int32)
    branches = [lambda op=op: op(current, level, op_seed) for op in ops]
    return index + 1, tf.ensure_shape(tf.switch_case(choice, branches), image.shape)

  # One loop body (not num_layers copies of the 16 ops) keeps the traced graph small.
  _, image = tf.while_loop(lambda index, _: index < num_layers, layer, (tf.constant(0), image))
  return image


def autoaugment(image: tf.Tensor, seed: tf.Tensor, policy=IMAGENET_POLICY) -> tf.Tensor:
  """AutoAugment (Cubuk et al. 2018): one sub-policy drawn uniformly, each of its steps applied with its prob."""
  _check_uint8_rgb(image, "autoaugment")
  names = sorted({name for steps in policy for name, _, _ in steps})
  ops = [AUTOAUGMENT_OPS[name] for name in names]
  num_steps = len(policy[0])
  if any(len(steps) != num_steps for steps in policy):
    raise ValueError("Every AutoAugment sub-policy must have the same number of steps.")
  # The policy as tables indexed [sub-policy, step], so each step is one switch over the distinct ops.
  op_table = tf.constant([[names.index(name) for name, _, _ in steps] for steps in policy], tf.int32)
  prob_table = tf.constant([[prob for _, prob, _ in steps] for steps in policy], tf.float32)
  level_table = tf.constant([[level for _, _, level in steps] for steps in policy], tf.float32)
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 1 + 2 * num_steps))
  choice = tf.random.stateless_uniform([], seeds[0], 0, len(policy), tf.int32)
  for step in range(num_steps):
    apply_seed, op_seed = seeds[1 + 2 * step], seeds[2 + 2 * step]
    applied = _uniform(apply_seed) < prob_table[choice, step]
    index = tf.where(applied, op_table[choice, step], len(ops))  # The last branch leaves the image alone.
    level = level_table[choice, step]
    branches = [lambda op=op, current=image, level=level, op_seed=op_seed: op(current, level, op_seed) for op in ops]
    branches.append(lambda current=image: current)
    image = tf.ensure_shape(tf.switch_case(index, branches), image.shape)
  return image


@register("randaugment")
def randaugment_op(num_layers: int = 2, magnitude: float = 10.0) -> Op:
  """RandAugment(N, M) on uint8 RGB images, as the ``randaugment`` preprocessing op."""
  if num_layers < 0 or magnitude < 0:
    raise ConfigError(f"num_layers ({num_layers}) and magnitude ({magnitude}) must be non-negative")
  return image_op(lambda image, seed: randaugment(image, seed, num_layers, magnitude))


@register("autoaugment")
def autoaugment_op(policy: str = "imagenet") -> Op:
  """AutoAugment with the paper's ImageNet policy on uint8 RGB images, as the ``autoaugment`` preprocessing op."""
  if policy != "imagenet":
    raise ConfigError(f"Unknown AutoAugment policy {policy!r}; the available one is 'imagenet'")
  return image_op(lambda image, seed: autoaugment(image, seed, IMAGENET_POLICY))
