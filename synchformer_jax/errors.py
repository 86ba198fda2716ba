"""The error every layer raises for a bad input, so that programs can tell it from a bug.

An `InputError` is about what the program was given: a file, a checkpoint, a model directory, a config
field or an argument value. Its message names that input and says what was expected; the command-line
tools print it as one line. Any other exception is a fault of the program and keeps its traceback.
"""


class InputError(ValueError):
  """A bad input; the message names the file or field and what was expected."""
