"""Exceptions that map to clipsan's documented exit codes.

The CLI catches these and prints their message as one line; anything else is
a bug and keeps its traceback.
"""

import re

# Control characters (newlines, ESC, ...) a message may carry from untrusted input: a column name, a
# tensor name, a path in a manifest. Shown escaped, so a message stays one line and cannot drive a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class ClipsanError(Exception):
    exit_code = 1

    def __init__(self, message: str = "", *args) -> None:
        super().__init__(one_line(message) if isinstance(message, str) else message, *args)


class UserError(ClipsanError):
    """Bad input or usage: the message names the file/field and what was expected (exit 2)."""

    exit_code = 2


class Interrupted(ClipsanError):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was written (exit 3)."""

    exit_code = 3
