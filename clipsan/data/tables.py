"""CSV/TSV tables (caption manifests and labelled sets): delimiter sniffing, columns by name, one-line errors."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from clipsan.config.limits import MAX_CAPTION_FILE_BYTES
from clipsan.errors import UserError

CANDIDATE_DELIMITERS = ("\t", ",", ";", "|")


# A larger field is not read (the csv module's own limit, raised from its 128 KiB
# default: web captions can be long). Its row is reported, not fatal.
csv.field_size_limit(max(csv.field_size_limit(), MAX_CAPTION_FILE_BYTES))
_FIELD_LIMIT_ERROR = "field larger than field limit"
_OVERSIZED = object()  # _next_row's answer for a row with an over-limit field


@contextmanager
def open_table(path: Path, delimiter: str | None = None) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str] | None]]]]:
    """Open a CSV/TSV file: yields (header, rows) where rows are (line number, cells).

    A row with a field over the field limit comes as (line number, None) and
    reading goes on at the next line, so one bad row cannot sink a manifest.
    Delimiter: ``delimiter`` if given, else by extension, else whichever common
    delimiter the header line actually contains.
    """
    try:
        handle = open(path, newline="", encoding="utf-8-sig", errors="replace")  # noqa: SIM115 - closed by the generator
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    with handle:
        first_line = handle.readline()
        handle.seek(0)
        if not first_line.strip():
            raise UserError(f"{path}: empty file (expected a header line)")
        reader = csv.reader(handle, delimiter=delimiter or _guess_delimiter(path, first_line))
        header = _next_row(reader, path)
        if header is _OVERSIZED:
            raise UserError(f"{path}:1: header line has a field over {MAX_CAPTION_FILE_BYTES:,} characters (expected column names)")
        header = [cell.strip() for cell in header]

        def rows() -> Iterator[tuple[int, list[str] | None]]:
            while True:
                row = _next_row(reader, path)
                if row is None:
                    return
                if row is _OVERSIZED:
                    yield reader.line_num, None
                elif row:
                    yield reader.line_num, row

        yield header, rows()


def _next_row(reader, path: Path):
    """The next row's cells; None at the end; _OVERSIZED for a row with an over-limit field."""
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as err:
        # The reader drops the rest of the line and starts afresh at the next one. (The
        # remaining lines of an over-limit *multi-line* quoted field are then read as rows
        # of their own; they rarely name an existing image and are skipped as such.)
        if str(err).startswith(_FIELD_LIMIT_ERROR):
            return _OVERSIZED
        raise UserError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def _guess_delimiter(path: Path, header_line: str) -> str:
    default = "\t" if path.suffix.lower() == ".tsv" else ","
    if default in header_line:
        return default
    counts = {d: header_line.count(d) for d in CANDIDATE_DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else default


def find_column(header: list[str], candidates: Sequence[str], override: str | None, path: Path, what: str, flag: str) -> int:
    """Index of the column named ``override`` (or the first of ``candidates``), case-insensitive."""
    lowered = [name.lower() for name in header]
    wanted = [override] if override else list(candidates)
    for name in wanted:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    columns = ", ".join(header) if any(header) else "none"
    if override:
        raise UserError(f"{path}: no column '{override}' for the {what} (columns: {columns})")
    raise UserError(f"{path}: no {what} column (expected one of {', '.join(candidates)}; columns: {columns}); name it with {flag}")
