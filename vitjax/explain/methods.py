"""Every attribution method by name, run on one image with the options of `config.explain`: one map per method.

Gradient methods explain the class logit; occlusion, LIME and the faithfulness curves the class probability, the
quantity a person reads. Maps are [H, W] numpy arrays at the model's input size, larger meaning more important.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vitjax.errors import ConfigError
from vitjax.explain import attention, attributions, gradcam, lime, occlusion
from vitjax.explain.scorer import Scorer, module_outputs

METHODS = (
  "gradients",
  "smoothgrad",
  "integrated_gradients",
  "grad_cam",
  "attention_rollout",
  "attention_last",
  "occlusion",
  "lime",
  "class_model",
)
ATTENTION = ("attention_rollout", "attention_last")
# Maps whose sign means something (evidence for or against the class): shown on a diverging colour scale.
SIGNED = ("integrated_gradients", "occlusion", "lime")


@dataclasses.dataclass
class Explanation:
  """One image's maps by name ([H, W]; integrated gradients once per baseline, `integrated_gradients_black`), the
  completeness error of each integrated-gradients map, and the last attention's map per head [heads, H, W]."""

  maps: dict[str, np.ndarray]
  completeness: dict[str, float]
  heads: np.ndarray | None = None


def check_options(options: ml_collections.ConfigDict) -> None:
  """Fails before any model runs on an unknown method or baseline, or on counts that cannot work."""
  unknown = sorted(set(options.methods) - set(METHODS))
  if unknown:
    raise ConfigError(f"Unknown config.explain.methods {unknown}; choose from: {', '.join(METHODS)}.")
  bad = sorted(set(options.integrated_gradients.baselines) - set(attributions.BASELINES))
  if bad or not options.integrated_gradients.baselines:
    raise ConfigError(
      f"config.explain.integrated_gradients.baselines must name some of {', '.join(attributions.BASELINES)}, "
      f"got {tuple(options.integrated_gradients.baselines)}."
    )
  counts = {
    "integrated_gradients.steps": options.integrated_gradients.steps,
    "smoothgrad.samples": options.smoothgrad.samples,
    "lime.samples": options.lime.samples,
    "faithfulness.steps": options.faithfulness.steps,
    "batch_size": options.batch_size,
  }
  for name, value in counts.items():
    if value < 1:
      raise ConfigError(f"config.explain.{name} must be at least 1, got {value}.")


def blur_sigma(options: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> float:
  """The blur of baselines and insertion starts in pixels: `options.blur_sigma` of the image's shorter side."""
  return float(options.blur_sigma * min(image_shape[:2]))


def applicable(scorer: Scorer, methods: tuple[str, ...], image_shape: tuple[int, ...]) -> tuple[list[str], list[str]]:
  """(the methods this model can give, those it cannot): attention maps need a model that has attention."""
  has_attention = any("MultiHeadDotProductAttention" in path for path, _ in module_outputs(scorer, image_shape))
  missing = [] if has_attention else [m for m in methods if m in ATTENTION]
  return [m for m in methods if m not in missing], missing


def _gradient_maps(scorer, image, label, key, options, methods) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Vanilla gradients, SmoothGrad and integrated gradients (one map per baseline) among `methods`."""
  found, completeness = {}, {}
  if "gradients" in methods:
    found["gradients"] = attributions.saliency(attributions.gradients(scorer, image, label))
  if "smoothgrad" in methods:
    grads = attributions.smoothgrad(
      scorer,
      image,
      label,
      key,
      samples=options.smoothgrad.samples,
      noise=options.smoothgrad.noise,
      batch_size=options.batch_size,
    )
    found["smoothgrad"] = attributions.saliency(grads)
  if "integrated_gradients" in methods:
    ig = options.integrated_gradients
    for kind in ig.baselines:
      reference = attributions.baseline(image, kind, blur_sigma=blur_sigma(options, image.shape))
      values, error = attributions.integrated_gradients(
        scorer, image, label, reference, steps=ig.steps, batch_size=options.batch_size
      )
      found[f"integrated_gradients_{kind}"] = attributions.contribution(values)
      completeness[f"integrated_gradients_{kind}"] = float(error)
  return found, completeness


def attribute(
  scorer: Scorer,
  image: np.ndarray,
  label: int,
  key: jax.Array,
  options: ml_collections.ConfigDict,
  *,
  methods: tuple[str, ...],
  layer: str,
) -> Explanation:
  """Every map of `methods` for class `label` of one host-preprocessed image [H, W, C]; Grad-CAM at `layer`."""
  pixels = jnp.asarray(image, jnp.float32)
  keys = jax.random.split(key, 2)
  found, completeness = _gradient_maps(scorer, pixels, label, keys[0], options, methods)
  heads = None
  if "grad_cam" in methods:
    found["grad_cam"] = gradcam.grad_cam(scorer, pixels, label, layer=layer)
  if any(m in methods for m in ATTENTION):
    flow, heads = attention.attention_maps(scorer, pixels)
    both = {"attention_rollout": flow, "attention_last": jnp.mean(heads, axis=0)}
    found.update({m: both[m] for m in ATTENTION if m in methods})
  if "occlusion" in methods:
    side = min(image.shape[:2])
    window, stride = (max(1, round(f * side)) for f in (options.occlusion.window, options.occlusion.stride))
    found["occlusion"] = occlusion.occlusion(
      scorer, pixels, label, window=window, stride=stride, fill=options.occlusion.fill, batch_size=options.batch_size
    )
  if "lime" in methods:
    found["lime"] = lime.lime(scorer, image, label, keys[1], **options.lime.to_dict(), batch_size=options.batch_size)
  maps = {name: np.asarray(value, np.float32) for name, value in found.items()}
  return Explanation(maps, completeness, None if heads is None else np.asarray(heads))
