"""How configs check themselves: every field declares its check once, next to its default.

A config made with a bad value raises ``ConfigError`` (a UserError: exit 2) in one line that
names the flag, the value and what was expected, whether it came from the command line or
from a caller of ``clipsan.api``. The command line also reads the checks to say each
option's valid range in ``--help``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from clipsan.errors import UserError


class ConfigError(UserError):
    """A config value outside what its field accepts."""

    def __init__(self, flag: str, value: Any, expected: str):
        self.flag, self.value, self.expected = flag, value, expected
        super().__init__(f"{flag} {shown(value)}: expected {expected}")

    def renamed(self, flags: dict[str, str]) -> ConfigError:
        """The same error under the flag a command spells the field with (craft-adv's --epochs is purify's --craft-epochs)."""
        return ConfigError(flags.get(self.flag, self.flag), self.value, self.expected)


def shown(value: Any) -> str:
    """A value as it is typed on the command line (1e-05, 1,3,5; a blank string quoted)."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    if isinstance(value, str) and not value.strip():
        return repr(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Check:
    """What one field accepts: a range, a set of choices, a pattern, or an existing path."""

    flag: str  # the command-line spelling, used in messages
    what: str = "a number"  # what a valid value is called: a count, a weight, a fraction, ...
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    high_open: bool = False
    choices: tuple[str, ...] = ()
    pattern: str | None = None  # a regular expression the whole value must match
    path: str | None = None  # "dir" | "file": the path must exist as one
    optional: bool = False  # None is accepted (meaning: decided elsewhere)

    def __call__(self, value: Any) -> None:
        if value is None and self.optional:
            return
        if not self.accepts(value):
            raise ConfigError(self.flag, value, self.expected())

    def accepts(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if self.pattern is not None:
            return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None
        if self.path is not None:
            return os.path.isdir(value) if self.path == "dir" else os.path.isfile(value)
        if isinstance(value, (tuple, list)):
            return all(self.accepts(v) for v in value) and len(value) > 0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def range(self) -> str:
        """The accepted values in words, e.g. '>= 1', 'in (0, 1]', 'one of quick, full'."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.path is not None:
            return f"an existing {'folder' if self.path == 'dir' else 'file'}"
        if self.pattern is not None:
            return ""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{shown(self.low)}, {shown(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {shown(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {shown(self.high)}"
        return ""

    def expected(self) -> str:
        if self.choices or self.path is not None:
            return self.range()
        if self.pattern is not None:
            return self.what  # e.g. "auto, cpu, cuda or cuda:N"
        return f"{self.what} {self.range()}".strip()


def checked(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **check: Any) -> Any:
    """A dataclass field whose value must pass ``Check(**check)``."""
    return field(default=default, default_factory=default_factory, metadata={"check": Check(**check)})


def check_of(config_type: type, name: str) -> Check | None:
    """The check declared on field ``name`` of ``config_type`` (the command line's help reads it)."""
    for f in dataclasses.fields(config_type):
        if f.name == name:
            return f.metadata.get("check")
    raise KeyError(f"{config_type.__name__} has no field {name!r}")


class Checked:
    """A config that checks its fields when it is made; ``validate`` adds checks across fields."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                check(getattr(self, f.name))
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields (override)."""


# The fields most configs have.
def count(default: int | None, flag: str, low: int = 1) -> Any:
    """An integer of at least ``low``; a default of None means None is accepted (decided elsewhere)."""
    return checked(default, flag=flag, what="a count", low=low, optional=default is None)


def weight(default: float, flag: str) -> Any:
    return checked(default, flag=flag, what="a weight", low=0.0)


def fraction(default: float | None, flag: str, *, low_open: bool = False, high_open: bool = False) -> Any:
    return checked(default, flag=flag, what="a fraction", low=0.0, high=1.0, low_open=low_open, high_open=high_open, optional=default is None)


def choice(default: str, flag: str, choices: tuple[str, ...]) -> Any:
    return checked(default, flag=flag, choices=tuple(choices))


@contextlib.contextmanager
def flags_as(flags: dict[str, str]) -> Iterator[None]:
    """Refusals inside name the fields as a command spells them (``ConfigError.renamed``)."""
    try:
        yield
    except ConfigError as err:
        raise err.renamed(flags) from None
