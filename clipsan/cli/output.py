"""What commands print: the report on stdout (text or JSON), notes on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from clipsan import strict_json
from clipsan.atomic import atomic_write_bytes
from clipsan.errors import UserError


def note(message: str) -> None:
    """Human notes (what was inferred, warnings) go to stderr so stdout stays machine-readable."""
    print(f"clipsan: {message}", file=sys.stderr)


def emit(report: dict, fmt: str, output: Path | None, render_text: Callable[[dict], str]) -> None:
    """Print the report in ``fmt`` on stdout and, with --output, write the same to a file."""
    text = render_text(report) if fmt == "text" else strict_json.dumps(report, indent=2, sort_keys=True)
    if not text.endswith("\n"):
        text += "\n"
    if output is not None and not output.parent.is_dir():
        raise UserError(f"{output}: --output folder does not exist")
    sys.stdout.write(text)
    sys.stdout.flush()
    if output is not None:
        atomic_write_bytes(output, text.encode())


def skipped_text(skipped: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()) if v) or "none"


def training_lines(report: dict) -> list[str]:
    """The lines every training command's text report shares."""
    return [
        f"  MODEL read as {report['layout']}: arch {report['arch']} ({report['arch_source']})",
        f"  activation {report['activation']} ({report['activation_source']})",
        f"  {report['steps']} steps, {report['epochs']} epochs, {report['seconds']} s",
        f"  {report['samples']} training pairs; skipped: {skipped_text(report['skipped'])}",
        f"  run directory: {report['run_dir']}",
    ]
