"""Hand-crafted image features as scikit-learn transformers over uint8 image batches (N, H, W, C), C 1 or 3.

Each is computed with the field's library (scikit-image, OpenCV, numpy) and is a plain estimator, so that it sits
as the first step of the saved `Pipeline` and a new image goes through exactly what the training images did.
Only `SiftBow` learns anything (its vocabulary); `fit` is where, and it sees the training images alone.
"""

from collections.abc import Callable, Sequence

import cv2
import ml_collections
import numpy as np
from skimage import color, feature, filters
from sklearn import base, cluster, pipeline
from sklearn.feature_extraction import text

from vitjax.errors import ConfigError


def gray(images: np.ndarray) -> np.ndarray:
  """Luminance in [0, 1], (N, H, W) float, of uint8 images (ITU-R 601 weights for colour, as scikit-image)."""
  if images.shape[-1] == 1:
    return images[..., 0].astype(np.float64) / 255.0
  return color.rgb2gray(images)


def gray_uint8(images: np.ndarray) -> np.ndarray:
  return np.round(gray(images) * 255.0).astype(np.uint8)


def grid_cells(height: int, width: int, grid: int) -> list[tuple[slice, slice]]:
  """The (rows, columns) slices of a grid x grid split of an image, as even as the size allows."""
  rows = np.array_split(np.arange(height), grid)
  cols = np.array_split(np.arange(width), grid)
  return [(slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1)) for r in rows for c in cols]


class _Stateless(base.TransformerMixin, base.BaseEstimator):
  """A feature with nothing to learn: `fit` only checks that the images are a uint8 batch."""

  def fit(self, images: np.ndarray, y=None):
    del y
    _check_batch(images)
    return self

  def __sklearn_is_fitted__(self) -> bool:
    return True


def _check_batch(images: np.ndarray) -> None:
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
    raise ValueError(f"Expected uint8 images (N, H, W, 1 or 3), got {images.dtype} {images.shape}.")


class Hog(_Stateless):
  """Histograms of oriented gradients of the luminance (scikit-image, L2-Hys block normalisation)."""

  def __init__(self, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2):
    self.orientations = orientations
    self.pixels_per_cell = pixels_per_cell
    self.cells_per_block = cells_per_block

  def transform(self, images: np.ndarray) -> np.ndarray:
    cell, block = (self.pixels_per_cell,) * 2, (self.cells_per_block,) * 2
    return np.stack(
      [
        feature.hog(g, orientations=self.orientations, pixels_per_cell=cell, cells_per_block=block)
        for g in gray(images)
      ]
    ).astype(np.float32)


class Lbp(_Stateless):
  """Uniform local binary patterns (8 * r neighbours at radius r): one normalised histogram of the P + 2 codes per
  radius and grid cell, so texture counts as a distribution, not as positions."""

  def __init__(self, radii: Sequence[int] = (1, 2, 3), grid: int = 1):
    self.radii = radii
    self.grid = grid

  def transform(self, images: np.ndarray) -> np.ndarray:
    out = []
    for g in gray_uint8(images):
      cells = grid_cells(*g.shape, self.grid)
      histograms = []
      for radius in self.radii:
        points = 8 * radius
        codes = feature.local_binary_pattern(g, points, radius, method="uniform")
        for rows, cols in cells:
          counts = np.bincount(codes[rows, cols].astype(np.int64).ravel(), minlength=points + 2)
          histograms.append(counts / counts.sum())
      out.append(np.concatenate(histograms))
    return np.stack(out).astype(np.float32)


class ColorHist(_Stateless):
  """Colour histogram in HSV or RGB, joint (bins**3 cells) or per channel (3 * bins), as fractions of the pixels;
  grayscale images count as RGB with equal channels."""

  def __init__(self, space: str = "hsv", mode: str = "joint", bins: int = 8):
    self.space = space
    self.mode = mode
    self.bins = bins

  def transform(self, images: np.ndarray) -> np.ndarray:
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    values = color.rgb2hsv(rgb) if self.space == "hsv" else rgb / 255.0
    out = []
    for pixels in values.reshape(len(values), -1, 3):
      if self.mode == "joint":
        counts, _ = np.histogramdd(pixels, bins=(self.bins,) * 3, range=[(0.0, 1.0)] * 3)
      else:
        counts = np.stack([np.histogram(pixels[:, c], bins=self.bins, range=(0.0, 1.0))[0] for c in range(3)])
      out.append(counts.ravel() / len(pixels))
    return np.stack(out).astype(np.float32)


class Gabor(_Stateless):
  """Energy (modulus of the complex response) of a bank of Gabor filters, frequencies x orientations, made
  zero-mean so that flat regions give none; mean and standard deviation per grid cell."""

  def __init__(self, frequencies: Sequence[float] = (0.1, 0.2, 0.3), orientations: int = 4, grid: int = 1):
    self.frequencies = frequencies
    self.orientations = orientations
    self.grid = grid

  def kernels(self) -> list[np.ndarray]:
    """The complex filters (scikit-image's `gabor_kernel`), each minus its mean."""
    bank = []
    for frequency in self.frequencies:
      for k in range(self.orientations):
        kernel = filters.gabor_kernel(frequency, theta=np.pi * k / self.orientations)
        bank.append(kernel - kernel.mean())
    return bank

  def energy(self, image: np.ndarray) -> np.ndarray:
    """(filters, H, W) energy of one float luminance image; borders reflect, as scikit-image's `gabor` does."""
    image = image.astype(np.float32)
    responses = []
    for kernel in self.kernels():
      real, imag = (cv2.filter2D(image, cv2.CV_32F, part.astype(np.float32)) for part in (kernel.real, kernel.imag))
      responses.append(np.hypot(real, imag))
    return np.stack(responses)

  def transform(self, images: np.ndarray) -> np.ndarray:
    out = []
    for g in gray(images):
      energy = self.energy(g)
      cells = [energy[:, rows, cols].reshape(len(energy), -1) for rows, cols in grid_cells(*g.shape, self.grid)]
      out.append(np.concatenate([statistic for cell in cells for statistic in (cell.mean(1), cell.std(1))]))
    return np.stack(out).astype(np.float32)


class RawPixels(_Stateless):
  """The resized image itself (or its luminance), flattened, in [0, 1]."""

  def __init__(self, grayscale: bool = False):
    self.grayscale = grayscale

  def transform(self, images: np.ndarray) -> np.ndarray:
    pixels = gray(images) if self.grayscale else images / 255.0
    return pixels.reshape(len(images), -1).astype(np.float32)


class SiftBow(base.TransformerMixin, base.BaseEstimator):
  """Bag of visual words: OpenCV SIFT descriptors (dense grid or detected keypoints) of the luminance, each
  assigned to the nearest of `vocabulary_size` k-means centres learnt in `fit`; per image the L1-normalised word
  histogram, or its TF-IDF weighting (inverse document frequencies from the `fit` images)."""

  def __init__(
    self,
    mode: str = "dense",
    step: int = 4,
    size: int = 8,
    vocabulary_size: int = 100,
    max_descriptors: int = 100_000,
    tfidf: bool = False,
    seed: int = 0,
  ):
    self.mode = mode
    self.step = step
    self.size = size
    self.vocabulary_size = vocabulary_size
    self.max_descriptors = max_descriptors
    self.tfidf = tfidf
    self.seed = seed

  def descriptors(self, image: np.ndarray) -> np.ndarray:
    """(K, 128) float32 SIFT descriptors of one uint8 luminance image; K may be 0."""
    sift = cv2.SIFT_create()
    if self.mode == "dense":
      half = self.size / 2
      ys = np.arange(half, image.shape[0] - half + 1, self.step)
      xs = np.arange(half, image.shape[1] - half + 1, self.step)
      keypoints = [cv2.KeyPoint(float(x), float(y), float(self.size)) for y in ys for x in xs]
      _, found = sift.compute(image, keypoints)
    else:
      _, found = sift.detectAndCompute(image, None)
    return np.zeros((0, 128), np.float32) if found is None else found.astype(np.float32)

  def fit(self, images: np.ndarray, y=None):
    """Learns the vocabulary from (a seeded sample of) the descriptors of `images`, and the IDF weights."""
    del y
    _check_batch(images)
    rng = np.random.default_rng(self.seed)
    per_image = max(1, self.max_descriptors // len(images))  # Bounds the memory held for k-means.
    sampled = []
    for g in gray_uint8(images):
      found = self.descriptors(g)
      sampled.append(found[rng.permutation(len(found))[:per_image]])
    sampled = np.concatenate(sampled)
    if len(sampled) < self.vocabulary_size:
      raise ConfigError(
        f"sift_bow found {len(sampled)} descriptors in the training images, fewer than vocabulary_size="
        f"{self.vocabulary_size}: use mode='dense', a smaller step or a larger image_size."
      )
    self.vocabulary_ = cluster.MiniBatchKMeans(
      n_clusters=self.vocabulary_size, random_state=self.seed, n_init=3, batch_size=4096
    ).fit(sampled)
    if self.tfidf:
      self.idf_ = text.TfidfTransformer().fit(self.word_counts(images))
    return self

  def word_counts(self, images: np.ndarray) -> np.ndarray:
    """(N, vocabulary_size) how often each visual word occurs in each image."""
    counts = np.zeros((len(images), self.vocabulary_size), np.float32)
    for i, g in enumerate(gray_uint8(images)):
      found = self.descriptors(g)
      if len(found):
        counts[i] = np.bincount(self.vocabulary_.predict(found), minlength=self.vocabulary_size)
    return counts

  def transform(self, images: np.ndarray) -> np.ndarray:
    counts = self.word_counts(images)
    if self.tfidf:
      return self.idf_.transform(counts).toarray().astype(np.float32)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


FEATURES: dict[str, type] = {
  "hog": Hog,
  "lbp": Lbp,
  "color_hist": ColorHist,
  "gabor": Gabor,
  "sift_bow": SiftBow,
  "raw_pixels": RawPixels,
}
# Options with a fixed set of values: checked with the config, before any data is read.
_CHOICES = {("color_hist", "space"): ("hsv", "rgb"), ("color_hist", "mode"): ("joint", "per_channel")}
_CHOICES[("sift_bow", "mode")] = ("dense", "keypoint")


def names(spec: str) -> list[str]:
  """The features a spec joins ("hog+lbp" -> [hog, lbp]); an unknown one fails naming the choices."""
  parts = [part.strip() for part in spec.split("+")]
  for part in parts:
    if part not in FEATURES:
      raise ConfigError(
        f"Unknown feature {part!r} in config.baseline.features entry {spec!r}; choose one of: "
        f"{', '.join(FEATURES)}, or several joined with '+' (e.g. 'hog+lbp')."
      )
  return parts


def from_config(spec: str, options: ml_collections.ConfigDict, *, seed: int) -> base.TransformerMixin:
  """The (unfitted) transformer of a feature spec, with its options from `config.baseline.<feature>`; several
  features become a `FeatureUnion` that concatenates them."""
  parts = []
  for name in names(spec):
    kwargs = options[name].to_dict()
    for (feature_name, key), choices in _CHOICES.items():
      if feature_name == name and kwargs[key] not in choices:
        raise ConfigError(f"Unknown config.baseline.{name}.{key}={kwargs[key]!r}; choose one of: {', '.join(choices)}.")
    constructor: Callable = FEATURES[name]
    parts.append((name, constructor(**kwargs, seed=seed) if name == "sift_bow" else constructor(**kwargs)))
  return parts[0][1] if len(parts) == 1 else pipeline.FeatureUnion(parts)
