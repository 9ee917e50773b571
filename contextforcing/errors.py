"""The one exception type for bad user input.

The CLI turns a `UserError` into a one-line message on stderr and exit code 2; everything else is a bug
and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user (config key, size, path, checkpoint...). The message names the problem."""
