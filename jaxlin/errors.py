"""Error types that entry points turn into one clear line for the user."""


class JaxlinError(Exception):
  """Base class for errors caused by the user's input, not by a bug."""


class ConfigError(JaxlinError, ValueError):
  """A flag or config value is invalid; the message names it and the fix."""


class DataError(JaxlinError):
  """A dataset is missing, unreachable or corrupt; the message names the path."""


class DivergenceError(JaxlinError):
  """Training produced a non-finite loss."""
