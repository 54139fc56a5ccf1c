"""Exceptions that map to clipsan's documented exit codes.

The CLI catches these and prints their message as one line; anything else is
a bug and keeps its traceback.
"""


class ClipsanError(Exception):
    exit_code = 1


class UserError(ClipsanError):
    """Bad input or usage: the message names the file/field and what was expected (exit 2)."""

    exit_code = 2


class Interrupted(ClipsanError):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was written (exit 3)."""

    exit_code = 3
