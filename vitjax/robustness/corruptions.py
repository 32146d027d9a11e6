"""Common corruptions of uint8 images at severities 0 (none) to 5, after Hendrycks & Dietterich (2019).

The kinds are those of ImageNet-C that apply to any image (noise, blur, colour, compression) plus grey-scale.
Parameters follow the CIFAR-10-C tables (32-pixel images, the closest to the small images trained here); spatial
ones (blur widths and radii) scale with the image side over 32. Where ImageNet-C's saturate mixes less and more
saturation, here `saturate` only adds it and `grayscale` removes it, so that each grows with its severity.
Corruptions run on the host in numpy, on the pixels of the run's eval preprocessing; randomness comes from a seed.
"""

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from vitjax.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
_REFERENCE_SIDE = 32  # The image side the parameter tables were made for.

# Per kind, the parameter of severities 1..5 (CIFAR-10-C; saturate and grayscale as the module says).
TABLES = {
  "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # Noise standard deviation on [0, 1] pixels.
  "shot_noise": (500, 250, 100, 75, 50),  # Photons per unit intensity: fewer is noisier.
  "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # Fraction of values set to 0 or 255.
  "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # Blur sigma in pixels at 32 pixels.
  "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # (disk radius, its blur).
  "motion_blur": ((10, 1.0), (10, 1.5), (10, 2.0), (10, 2.5), (12, 3.0)),  # (length, sigma) along a random angle.
  "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # Added to the HSV value.
  "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # Factor on the distance to the image's mean.
  "saturate": (1.5, 2.0, 2.5, 3.0, 4.0),  # Factor on the distance to the pixel's grey.
  "grayscale": (0.2, 0.4, 0.6, 0.8, 1.0),  # Weight of the pixel's grey.
  "jpeg": (80, 65, 58, 50, 40),  # JPEG quality.
  "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # Side of the coarse image as a fraction.
}
KINDS = tuple(TABLES)


def _unit(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float64) / 255.0


def _to_uint8(values: np.ndarray) -> np.ndarray:
  return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def _gaussian_noise(images, c, rng, scale):
  return _to_uint8(_unit(images) + rng.normal(size=images.shape) * c)


def _shot_noise(images, c, rng, scale):
  return _to_uint8(rng.poisson(_unit(images) * c) / c)


def _impulse_noise(images, c, rng, scale):
  hit, salt = rng.random(images.shape) < c, rng.random(images.shape) < 0.5
  return np.where(hit, np.where(salt, 255, 0), images).astype(np.uint8)


def _gaussian_blur(images, c, rng, scale):
  return _to_uint8(ndimage.gaussian_filter(_unit(images), sigma=(0, c * scale, c * scale, 0), mode="nearest"))


def _convolve_each(images: np.ndarray, kernels: list[np.ndarray]) -> np.ndarray:
  """Each image convolved (edges repeated) with its own 2-D kernel, every channel alike."""
  out = [ndimage.convolve(_unit(image), kernel[:, :, None], mode="nearest") for image, kernel in zip(images, kernels)]
  return _to_uint8(np.stack(out))


def defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
  """ImageNet-C's defocus: a disk of `radius` on the pixel grid, softened by a 3x3 Gaussian of `alias_blur`."""
  half = int(np.ceil(radius)) + 1
  y, x = np.mgrid[-half : half + 1, -half : half + 1]
  disk = (x**2 + y**2 <= radius**2).astype(np.float64)
  taps = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur**2))
  kernel = ndimage.convolve(disk / disk.sum(), np.outer(taps, taps) / taps.sum() ** 2, mode="constant")
  return kernel / kernel.sum()


def _defocus_blur(images, c, rng, scale):
  radius, alias_blur = c
  return _convolve_each(images, [defocus_kernel(radius * scale, alias_blur * scale)] * len(images))


def motion_kernel(length: float, sigma: float, angle: float) -> np.ndarray:
  """A one-sided streak (ImageMagick's motion blur as ImageNet-C uses it): Gaussian weights of `sigma` over
  `length` pixels along `angle` (radians), each tap spread bilinearly over the grid."""
  taps = np.arange(int(np.ceil(length)))
  weights = np.exp(-(taps**2) / (2 * sigma**2))
  half = len(taps)
  kernel = np.zeros((2 * half + 1, 2 * half + 1))
  for tap, weight in zip(taps, weights):
    y, x = half + tap * np.sin(angle), half + tap * np.cos(angle)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - y0, x - x0
    for dy, dx, share in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
      kernel[y0 + dy, x0 + dx] += weight * share
  return kernel / kernel.sum()


def _motion_blur(images, c, rng, scale):
  length, sigma = c
  angles = np.deg2rad(rng.uniform(-45, 45, size=len(images)))
  return _convolve_each(images, [motion_kernel(length * scale, sigma * scale, angle) for angle in angles])


def _brightness(images, c, rng, scale):
  # HSV brightness: adding c to the value V = max(r, g, b) at fixed hue and saturation scales the pixel by
  # (V + c) / V; a black pixel becomes grey c.
  x = _unit(images)
  value = x.max(axis=-1, keepdims=True)
  brighter = np.minimum(value + c, 1.0)
  return _to_uint8(np.where(value > 0, x * brighter / np.maximum(value, 1e-12), brighter))


def _contrast(images, c, rng, scale):
  x = _unit(images)
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return _to_uint8((x - mean) * c + mean)


def _grey(x: np.ndarray) -> np.ndarray:
  """Luma (ITU-R 601) of RGB pixels, kept as a channel axis; other channel counts are their own grey."""
  if x.shape[-1] != 3:
    return x
  return (x @ np.array([0.299, 0.587, 0.114]))[..., None]


def _saturate(images, c, rng, scale):
  x = _unit(images)
  return _to_uint8(_grey(x) + (x - _grey(x)) * c)


def _grayscale(images, c, rng, scale):
  x = _unit(images)
  return _to_uint8(x + (_grey(x) - x) * c)


def _jpeg(images, c, rng, scale):
  return np.stack([_jpeg_one(image, c) for image in images])


def _jpeg_one(image: np.ndarray, quality: int) -> np.ndarray:
  grey = image.shape[-1] == 1
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if grey else image).save(buffer, format="JPEG", quality=quality)
  decoded = np.asarray(Image.open(buffer))
  return decoded[..., None] if grey else decoded


def _pixelate(images, c, rng, scale):
  return np.stack([_pixelate_one(image, c) for image in images])


def _pixelate_one(image: np.ndarray, fraction: float) -> np.ndarray:
  grey = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if grey else image)
  width, height = pil.size
  coarse = pil.resize((max(1, int(width * fraction)), max(1, int(height * fraction))), Image.BOX)
  out = np.asarray(coarse.resize((width, height), Image.BOX))
  return out[..., None] if grey else out


_FUNCTIONS: dict[str, Callable] = {
  "gaussian_noise": _gaussian_noise,
  "shot_noise": _shot_noise,
  "impulse_noise": _impulse_noise,
  "gaussian_blur": _gaussian_blur,
  "defocus_blur": _defocus_blur,
  "motion_blur": _motion_blur,
  "brightness": _brightness,
  "contrast": _contrast,
  "saturate": _saturate,
  "grayscale": _grayscale,
  "jpeg": _jpeg,
  "pixelate": _pixelate,
}


def check_kinds(kinds: tuple[str, ...]) -> None:
  """Fails early on a corruption name that does not exist, naming the choices."""
  unknown = [kind for kind in kinds if kind not in TABLES]
  if unknown:
    raise ConfigError(f"Unknown config.robustness.corruptions {unknown}; choose from: {', '.join(KINDS)}.")


def corrupt(images: np.ndarray, kind: str, severity: int, *, seed: int = 0) -> np.ndarray:
  """`images` (uint8, (N, H, W, C)) under corruption `kind` at `severity` (0 returns them unchanged).

  The same `seed` draws the same noise, angles and impulse positions at every severity, so severities differ
  only in strength.
  """
  check_kinds((kind,))
  if severity not in (0, *SEVERITIES):
    raise ValueError(f"Corruption severity must be one of 0..5, got {severity}.")
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"Corruptions take uint8 batches (N, H, W, C), got {images.dtype} {images.shape}.")
  if severity == 0:
    return images.copy()
  scale = min(images.shape[1:3]) / _REFERENCE_SIDE
  return _FUNCTIONS[kind](images, TABLES[kind][severity - 1], np.random.default_rng(seed), scale)
