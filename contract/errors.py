"""UserError: an error in what the user gave (a file, a row, a flag, a request), not a bug.

Every stage's own error classes derive from it, so each command-line entry point prints such an
error as one line and exits with status 2, and lets anything else raise with its traceback.
"""


class UserError(Exception):
    """The message names the file, row, field or request at fault and says what to do."""
