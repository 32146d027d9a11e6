"""The export formats and the quantisations each offers; light to import, so a command checks its flags at once."""

from vitjax.errors import ConfigError

QUANTIZATIONS = {"saved_model": ("none",), "tflite": ("none", "float16", "int8"), "onnx": ("none", "int8")}
FORMATS = tuple(QUANTIZATIONS)


def check(format: str, quantize: str) -> None:
  """Fails with the valid choices on an unknown format or a quantisation the format does not offer."""
  if format not in QUANTIZATIONS:
    raise ConfigError(f"Unknown export format {format!r}; choose one of: {', '.join(FORMATS)}.")
  if quantize not in QUANTIZATIONS[format]:
    raise ConfigError(
      f"--quantize={quantize} is not available for {format}; choose one of: {', '.join(QUANTIZATIONS[format])}."
    )
