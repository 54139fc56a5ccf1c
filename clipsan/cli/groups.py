"""Option groups: options several commands share, declared once as a dataclass of Annotated fields.

A command parameter whose annotation is such a dataclass is spread into one
Typer option per field; the command receives the group rebuilt as the
dataclass. ``Annotated[Group, Panel("title")]`` shows the group's options
under another help panel in that command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from copy import copy
from enum import Enum
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str


def _group_and_panel(hint) -> tuple[type | None, str | None]:
    if typing.get_origin(hint) is typing.Annotated:
        base, *extras = typing.get_args(hint)
        if dataclasses.is_dataclass(base):
            panels = [e.title for e in extras if isinstance(e, Panel)]
            return base, (panels[0] if panels else None)
        return None, None
    return (hint, None) if dataclasses.is_dataclass(hint) else (None, None)


def _in_panel(hint, title: str):
    base, *infos = typing.get_args(hint)
    moved = []
    for info in infos:
        info = copy(info)
        info.rich_help_panel = title
        moved.append(info)
    return typing.Annotated[(base, *moved)]


def group_fields(group: type) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(group, include_extras=True)
    params = []
    for f in dataclasses.fields(group):
        default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[f.name]))
    return params


def with_option_groups(func):
    """Spread ``func``'s option-group parameters into Typer options (see the module docstring)."""
    hints = typing.get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for p in inspect.signature(func).parameters.values():
        group, panel = _group_and_panel(hints.get(p.name, p.annotation))
        if group is None:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)))
            continue
        groups[p.name] = group
        for field in group_fields(group):
            params.append(field if panel is None else field.replace(annotation=_in_panel(field.annotation, panel)))
    names = [p.name for p in params]
    clashes = {n for n in names if names.count(n) > 1}
    if clashes:
        raise TypeError(f"{func.__name__}: options declared twice: {sorted(clashes)}")

    @functools.wraps(func)
    def command(**values):
        for name, group in groups.items():
            values[name] = group(**{f.name: values.pop(f.name) for f in dataclasses.fields(group)})
        return func(**values)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _plain(value):
    """Option values as configs hold them: Enum members by value, paths as strings."""
    if isinstance(value, Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


def fill(config_type: type, *groups, **given):
    """``config_type`` from the option groups' fields of the same names, plus ``given`` ones."""
    names = {f.name for f in dataclasses.fields(config_type)}
    values = {f.name: _plain(getattr(g, f.name)) for g in groups for f in dataclasses.fields(g) if f.name in names}
    return config_type(**{**values, **given})
