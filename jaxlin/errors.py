"""Error types that entry points turn into one clear line for the user.

Library errors speak the library's words: they name function arguments
(``learning_rates``, ``data_dir``), never command-line flags. An error about
one argument carries its name in ``.argument``, so an entry point can add the
flag that sets it (``--learning_rate``) without parsing the message.
"""


class JaxlinError(Exception):
  """Base class for errors caused by the user's input, not by a bug.

  ``library_hint``: advice that only a caller of the library can act on (its own
  loss, optimizer or data), appended to the message after "; ". ``.message`` is
  the message without it: what an entry point, whose inputs are its own, shows.
  """

  def __init__(self, message: str = "", *, argument: str | None = None,
               library_hint: str | None = None):
    message = str(message)
    super().__init__(message + (f"; {library_hint}" if library_hint else ""))
    self.message = message
    self.argument = argument
    self.library_hint = library_hint


class InputError(JaxlinError, ValueError):
  """A function argument is invalid (shape, dtype, range, NaN); ``.argument`` names it."""


class DataError(JaxlinError):
  """A dataset is missing, unreachable or corrupt; the message names the path."""


class DivergenceError(JaxlinError):
  """Training produced a non-finite loss or parameters.

  ``.what``: what happened; ``.advice``: what to try, in the library's words (``.message``
  is "what; advice"), so an entry point can replace the advice with its own flags';
  ``.step``: at which step (from 1), where known.
  """

  def __init__(self, what: str = "", *, advice: str | None = None,
               argument: str | None = None, library_hint: str | None = None,
               step: int | None = None):
    what = str(what)
    super().__init__(what + (f"; {advice}" if advice else ""), argument=argument,
                     library_hint=library_hint)
    self.what = what
    self.advice = advice
    self.step = step
