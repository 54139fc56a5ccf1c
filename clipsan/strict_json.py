"""JSON as the standard defines it: every document clipsan writes goes through here, and
clipsan's own files read back from a user (a calibration file) are read here.

Python's json module writes NaN and Infinity by default, which strict parsers (jq,
JavaScript, Go, Rust's serde) reject. Reports say null for a figure that could not
be computed (e.g. ASR over zero images); a non-finite number reaching a writer is a
bug, and the error names the field instead of writing a document nobody can read.
Reading is as strict: NaN/Infinity, a key given twice, bytes that are not UTF-8 and
files over a size bound are refused in one line naming the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from clipsan.errors import UserError


def dumps(value: Any, **kwargs: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:
        where = non_finite_field(value)
        if where is None:
            raise
        raise ValueError(f"refusing to write non-standard JSON: {where} is not a finite number") from None


def non_finite_field(value: Any, where: str = "$") -> str | None:
    """The path (e.g. `$.signals[0].statistic`) of the first NaN/inf in `value`, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        items = ((f"{where}.{k}", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for path, item in items if (found := non_finite_field(item, path)) is not None), None)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    twice = next((key for i, key in enumerate(keys) if key in keys[:i]), None)
    if twice is not None:
        raise ValueError(f"key {twice!r} given twice")
    return dict(pairs)


def read_object(path: str | os.PathLike[str], max_bytes: int, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (at most ``max_bytes``), read as strict parsers read it; else a
    one-line UserError naming the file and ``what`` it should have been."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UserError(f"{path}: {size:,} bytes, more than a {what} holds (at most {max_bytes:,})")
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(data) > max_bytes:  # grew since stat
        raise UserError(f"{path}: more than a {what} holds (at most {max_bytes:,} bytes)")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (expected a {what})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply (expected a {what})") from None
    except ValueError as err:  # JSONDecodeError included
        raise UserError(f"{path}: not valid JSON ({str(err).splitlines()[0]}; expected a {what})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a {what} (a JSON object), got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """What a parsed JSON value is called in JSON's own words (for messages)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    names = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)
