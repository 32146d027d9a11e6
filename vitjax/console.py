"""What the command-line entry points keep off the console: the per-operation INFO lines of Orbax, TFDS and JAX,
and deprecation notices of those libraries that a user of vitjax cannot act on. Entry points call
`quiet_library_noise()`; importing vitjax changes no logging or warning setting.
"""

import logging
import re
import warnings

from absl import logging as absl_logging

# Libraries whose INFO lines describe single operations (each checkpoint file, each dataset read).
CHATTY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/")
# Deprecation notices raised inside the libraries themselves, matched at the start of their message.
LIBRARY_DEPRECATIONS = re.compile(
  r"`\w+\.dtype` is deprecated"  # TFDS, for the features (FeatureConnector, ClassLabel...) of every dataset it opens.
  r"|`read` option is deprecated"  # Orbax's CheckpointManager, on every resume check.
)
# Warnings of the `warnings` module, by the start of their message: TF Lite's own interpreter is the one the
# installed TensorFlow offers; its successor is another package.
WARNING_MESSAGES = (r"\s*Warning: tf\.lite\.Interpreter is deprecated",)


class LibraryNoiseFilter(logging.Filter):
  """Drops INFO lines of `CHATTY` libraries and the `LIBRARY_DEPRECATIONS`; other warnings and errors show."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.WARNING:
      return not any(part in record.pathname for part in CHATTY)
    return not (record.levelno == logging.WARNING and LIBRARY_DEPRECATIONS.match(str(record.msg)))


def quiet_library_noise() -> None:
  """Installs the filter on absl's handler and ignores the known library `warnings`; for entry points only."""
  absl_logging.get_absl_handler().addFilter(LibraryNoiseFilter())
  for message in WARNING_MESSAGES:
    warnings.filterwarnings("ignore", message=message)
