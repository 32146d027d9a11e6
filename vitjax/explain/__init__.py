"""Explanations of a trained model's predictions: attribution maps, attention rollout, class-model images, and how
faithful each map is (`--mode=explain`, or `explain_images(vitjax.Classifier.load(workdir), images, options)`). The
modules `lime` and `occlusion` hold the functions of the same name."""

from vitjax.explain.attention import attention_maps, rollout
from vitjax.explain.attributions import gradients, integrated_gradients, smoothgrad
from vitjax.explain.faithfulness import deletion_insertion
from vitjax.explain.gradcam import default_layer, grad_cam
from vitjax.explain.methods import METHODS, Explanation, attribute
from vitjax.explain.report import explain_images, run_explain
from vitjax.explain.scorer import Scorer
from vitjax.explain.visualize import class_model

__all__ = [
  "METHODS",
  "Explanation",
  "Scorer",
  "attention_maps",
  "attribute",
  "class_model",
  "default_layer",
  "deletion_insertion",
  "explain_images",
  "grad_cam",
  "gradients",
  "integrated_gradients",
  "rollout",
  "run_explain",
  "smoothgrad",
]
