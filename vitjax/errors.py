"""The error a user fixes by changing the config or the command line: `python -m vitjax.main` prints it as one
line; anything else keeps its traceback. It imports nothing, so the entry point can check a config before JAX
and TensorFlow load."""


class ConfigError(ValueError):
  """A config value, path or flag that cannot work; the message names the problem and the fix.

  A ValueError, so that callers that catch ValueError (and tests that expect it) keep working.
  """
