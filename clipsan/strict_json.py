"""JSON as the standard defines it: every document clipsan writes goes through here, and the
reports it reads back as input (``loads``).

Python's json module writes NaN and Infinity by default, which strict parsers (jq,
JavaScript, Go, Rust's serde) reject. Reports say null for a figure that could not
be computed (e.g. ASR over zero images); a non-finite number reaching a writer is a
bug, and the error names the field instead of writing a document nobody can read.
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(value: Any, **kwargs: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:
        where = non_finite_field(value)
        if where is None:
            raise
        raise ValueError(f"refusing to write non-standard JSON: {where} is not a finite number") from None


def loads(text: str | bytes) -> Any:
    """Parse as strict parsers do: NaN, Infinity and -Infinity (and numbers that overflow to them) are
    refused, as is nesting deeper than Python's recursion allows. Raises ValueError in every case."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
        where = non_finite_field(value)  # 1e999 parses as inf
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if where is not None:
        raise ValueError(f"{where} is not a finite number")
    return value


def _refuse_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


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
