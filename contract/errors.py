"""UserError: an error in what the user gave (a file, a row, a flag, a request), not a bug.

Every stage's own error classes derive from it, so each command-line entry point (contract/cli.py)
prints such an error as one line and exits with status 2, and lets anything else raise with its
traceback. Interrupted: a run stopped by a signal after saving what it had (exit status 130).
"""


class UserError(Exception):
    """The message names the file, row, field or request at fault and says what to do."""


class Interrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM that saved its state; the message says how to resume."""
