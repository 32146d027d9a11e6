"""A trained model as a Python object: class probabilities, top-k names and features for image files and arrays.

    clf = Classifier.load("/tmp/run")                   # a run's workdir: newest checkpoint, EMA weights if kept
    clf.top_k(["cat.jpg", "dog.png"], k=3)              # [[("cat", 0.91), ...], ...]

Images go through the run's own `pp_eval` (inputs.Preprocessing), in batches; the model function is jitted once per
batch shape, and batches are padded to a few bucket sizes so that a long stream compiles at most a handful.
"""

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vitjax import checkpoints, data, models, transfer
from vitjax.deploy.inputs import Preprocessing, UnreadableFileError
from vitjax.errors import ConfigError

Image = str | os.PathLike | np.ndarray
# The preprocessing of a public `.npz` checkpoint unless told otherwise: the ViT/BiT convention at 224 pixels.
NPZ_PP_EVAL = "resize(224)|to_rgb|value_range(-1, 1)"
# Losses whose model outputs are independent per-class scores: probabilities are sigmoids, not a softmax.
SIGMOID_LOSSES = ("sigmoid_xent", "focal")


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One input's result: its position in the input list, its probabilities (or features), or why it has none."""

  index: int
  output: np.ndarray | None
  error: str = ""


class Classifier:
  """A model with its weights, class names and eval preprocessing (and the run's config, if from a run); see `load`."""

  def __init__(
    self,
    model: nn.Module,
    variables: Any,
    *,
    class_names: Sequence[str],
    pp_eval: str,
    activation: str = "softmax",
    batch_size: int = 32,
    source: str = "",
    config: ml_collections.ConfigDict | None = None,
  ):
    if activation not in ("softmax", "sigmoid"):
      raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
    self.model, self.class_names, self.activation = model, list(class_names), activation
    self.batch_size, self.source, self.config = batch_size, source, config
    self.preprocessing = Preprocessing(pp_eval)
    self.variables = jax.device_put(variables)
    self._probabilities = jax.jit(self.serving_function())
    self._features = jax.jit(self._features_function())

  @classmethod
  def load(
    cls,
    source: str,
    *,
    step: int | None = None,
    ema: bool | None = None,
    model: str | ml_collections.ConfigDict | None = None,
    class_names: Sequence[str] | None = None,
    pp_eval: str | None = None,
    batch_size: int = 32,
    seq_len: int | None = None,
  ) -> "Classifier":
    """The model of a run's workdir (checkpoint `step`, default the newest; EMA parameters when the run kept them
    unless `ema=False`), or of an `.npz` checkpoint with `model` (a registered name or a `config.model`) and
    `class_names`, or of a Hub repo in timm's format (`hf-hub:ORG/NAME[@REVISION]`, which names its own model,
    classes and preprocessing). `pp_eval` replaces the run's eval preprocessing (for an `.npz`: `NPZ_PP_EVAL`); a
    NaFlex run's images become `seq_len` patches (None: the longest it trained at), each at its own aspect ratio."""
    if seq_len is not None and not os.path.isdir(source):
      raise ConfigError(f"A sequence length ({seq_len}) applies to a NaFlex run's workdir; {source!r} is not one.")
    if transfer.hub.is_hub_name(source):
      hub_model, module, variables = transfer.hub.load_model(source)
      pp_eval = pp_eval or hub_model.pp_eval
      return cls(
        module, variables, class_names=hub_model.class_names, pp_eval=pp_eval, batch_size=batch_size, source=source
      )
    if os.path.isdir(source):
      return cls._from_run(source, step=step, ema=ema, pp_eval=pp_eval, batch_size=batch_size, seq_len=seq_len)
    if not os.path.isfile(source):
      raise ConfigError(f"No run workdir or checkpoint file at {source!r}.")
    if model is None or not class_names:
      raise ConfigError(f"Loading {source!r} needs the model's name and the class names (model=..., class_names=...).")
    if isinstance(model, str):
      model = ml_collections.ConfigDict({"name": model})
    pp_eval = pp_eval or NPZ_PP_EVAL
    module = models.from_config(model, num_classes=len(class_names))
    image_shape = Preprocessing(pp_eval).input_shape or (224, 224, 3)
    abstract = jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0), image_shape=image_shape))
    variables, _ = transfer.load_variables(source, abstract)
    return cls(
      module, variables, class_names=class_names, pp_eval=pp_eval, batch_size=batch_size, source=os.fspath(source)
    )

  @classmethod
  def _from_run(
    cls, workdir: str, *, step: int | None, ema: bool | None, pp_eval: str | None, batch_size: int, seq_len
  ):
    run = checkpoints.load_run(workdir, step=step)
    use_ema = run.ema_params is not None if ema is None else ema
    model = models.from_config(run.config.model, num_classes=len(run.class_names))
    return cls(
      model,
      run.variables(ema=use_ema),
      class_names=run.class_names,
      pp_eval=pp_eval or data.at_seq_len(run.config.data, seq_len).pp_eval,
      activation="sigmoid" if run.config.loss.name in SIGMOID_LOSSES else "softmax",
      batch_size=batch_size,
      source=f"{os.path.abspath(workdir)} (step {run.meta.get('step')}{', EMA' if use_ema else ''})",
      config=run.config,
    )

  def on_images(self) -> "Classifier":
    """This classifier, taking whole images at their host-preprocessed size: for a NaFlex model (which reads an
    image as its full patch grid, with the logits of its padded patches) the spec without its final `patchify`,
    what explanations attribute over; any other classifier is itself."""
    if not self.preprocessing.packs:
      return self
    return Classifier(
      self.model,
      self.variables,
      class_names=self.class_names,
      pp_eval=self.preprocessing.image_spec,
      activation=self.activation,
      batch_size=self.batch_size,
      source=self.source,
      config=self.config,
    )

  @property
  def input_shape(self) -> tuple[int, ...] | None:
    """(height, width, channels) of the model's input after the host ops of `pp_eval`; None if they keep sizes."""
    return self.preprocessing.input_shape

  def serving_function(self) -> Callable[[Any, jax.Array], jax.Array]:
    """`probabilities(variables, images)`: host-preprocessed (uint8) images [N, H, W, C] -> [N, num_classes], the
    normalisation included; pure, for jit and for the exporters."""
    model, normalize = self.model, self.preprocessing.normalize
    activate = jax.nn.sigmoid if self.activation == "sigmoid" else lambda z: jax.nn.softmax(z, axis=-1)
    return lambda variables, images: activate(model.apply(variables, normalize(images), train=False))

  def _features_function(self) -> Callable[[Any, jax.Array], jax.Array]:
    model, normalize = self.model, self.preprocessing.normalize

    def features(variables, images):
      _, state = model.apply(variables, normalize(images), train=False, mutable=["intermediates"])
      return state["intermediates"]["pre_logits"][0]

    return features

  def predict(self, images: Sequence[Image] | np.ndarray) -> np.ndarray:
    """Class probabilities [N, num_classes] of image files or uint8 arrays of any size (a list, or one array
    [N, H, W(, C)]); an unreadable file raises an UnreadableFileError naming it."""
    return _stack(self.iter_predictions(images), width=len(self.class_names))

  def top_k(self, images: Sequence[Image] | np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
    """The `k` most probable (class name, probability) pairs of every image, most probable first."""
    probabilities = self.predict(images)
    return [[(self.class_names[i], float(p[i])) for i in np.argsort(-p, kind="stable")[:k]] for p in probabilities]

  def features(self, images: Sequence[Image] | np.ndarray) -> np.ndarray:
    """Pre-logits features [N, D] (what the head sees) of image files or arrays."""
    return _stack(self.iter_predictions(images, function=self._features), width=0)

  def iter_predictions(
    self, images: Sequence[Image] | np.ndarray, *, function: Callable | None = None, workers: int | None = None
  ) -> Iterator[Prediction]:
    """A Prediction per input, in order, batch by batch: unreadable files give one with `error` and no result, and
    the stream goes on. The next batch is read and preprocessed on `workers` threads (default: one per CPU core)
    while the model runs on the current one."""
    function = function or self._probabilities
    images = _as_list(images)
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:

      def submit(start: int) -> list[concurrent.futures.Future]:
        stop = min(start + self.batch_size, len(images))
        return [pool.submit(self._host, images[i]) for i in range(start, stop)]

      ahead = submit(0)
      for start in range(0, len(images), self.batch_size):
        loaded = [future.result() for future in ahead]
        ahead = submit(start + self.batch_size)
        good = [i for i, item in enumerate(loaded) if not isinstance(item, str)]
        results = dict(zip(good, self._run(function, [loaded[i] for i in good]) if good else []))
        for i, item in enumerate(loaded):
          yield Prediction(start + i, results[i]) if i in results else Prediction(start + i, None, item)

  def _host(self, image: Image) -> np.ndarray | str:
    """Host-preprocessed pixels, or the reason a file cannot give any."""
    if isinstance(image, np.ndarray):
      return self.preprocessing.pixels(image)
    try:
      return self.preprocessing.file(os.fspath(image))
    except UnreadableFileError as e:
      return str(e)

  def _run(self, function: Callable, images: list[np.ndarray]) -> np.ndarray:
    """`function` on one batch, padded to a bucket size (a power of two up to `batch_size`) to bound recompiles."""
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
      raise ConfigError(
        f"pp_eval={self.preprocessing.spec!r} gives images of different sizes {sorted(shapes)}; end it with a "
        f"fixed-size op such as resize or center_crop."
      )
    count = len(images)
    bucket = min(self.batch_size, 1 << (count - 1).bit_length())
    batch = np.stack(images + [np.zeros_like(images[0])] * (bucket - count))
    try:
      return np.asarray(function(self.variables, jnp.asarray(batch)))[:count]
    except flax.errors.ScopeParamShapeError as e:
      raise ConfigError(
        f"pp_eval={self.preprocessing.spec!r} gives images of shape {batch.shape[1:]}, which this model's weights do "
        f"not take ({str(e).splitlines()[0]}); start pp_eval with decode(channels=1) for a one-channel model, or give "
        "the model's input size to resize."
      ) from None


def _as_list(images: Image | Sequence[Image] | np.ndarray) -> Sequence[Image]:
  """A sequence of single images: one path is a list of one, an array must be a batch [N, H, W] or [N, H, W, C]."""
  if isinstance(images, (str, os.PathLike)):
    return [images]
  if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
    raise ValueError(f"An array of images must be a batch [N, H, W] or [N, H, W, C], got shape {images.shape}.")
  return images


def _stack(predictions: Iterator[Prediction], *, width: int) -> np.ndarray:
  """The outputs of all predictions as one array; the first unreadable file raises its error."""
  rows = []
  for prediction in predictions:
    if prediction.output is None:
      raise UnreadableFileError(prediction.error)
    rows.append(prediction.output)
  return np.stack(rows) if rows else np.zeros((0, width), np.float32)
