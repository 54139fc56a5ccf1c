"""What a command is to the app: its name, help and examples, and a body whose errors become exit codes.

Command modules (one per command) declare a ``Command``; ``clipsan.cli.app`` registers them all
in one place. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from typer.core import TyperCommand

from clipsan.cli.groups import with_option_groups
from clipsan.errors import ClipsanError


def rich_output() -> bool:
    """Colour and box drawing only on a terminal, and never with NO_COLOR set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


class PanelCommand(TyperCommand):
    """Plain-text help that keeps Typer's panels as sections and the examples' line breaks."""

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            default = "Arguments" if param.param_type_name == "argument" else "Options"
            sections.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(record)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)

    def format_epilog(self, ctx, formatter) -> None:
        if self.epilog:
            formatter.write_paragraph()
            for line in self.epilog.strip("\n").splitlines():
                formatter.write(f"{' ' * formatter.current_indent}{line}\n")


@dataclass(frozen=True)
class Command:
    name: str  # as typed: clipsan NAME
    summary: str  # one line in `clipsan --help`
    help: str
    examples: tuple[str, ...]  # real command lines, shown at the end of the command's help
    body: Callable[..., int | None]  # its parameters are Typer options and option groups; returns an exit code or None

    @property
    def epilog(self) -> str:
        return "Examples:\n" + "\n".join(f"  {line}" for line in self.examples)

    def callback(self) -> Callable[..., None]:
        """The body with its option groups spread into Typer options, and clipsan's exit codes."""
        return _exit_codes(self.name, with_option_groups(self.body))


def _printed_by_rank_0(exc: ClipsanError) -> bool:
    """Under torchrun every process ends with an error the runtime shared among them; one line is enough."""
    return bool(getattr(exc, "shared", False)) and os.environ.get("RANK", "0") != "0"


def _exit_codes(name: str, func):
    """Map the library's errors to clipsan's exit codes, with one line on stderr and no traceback."""

    @functools.wraps(func)
    def run(**values):
        try:
            code = func(**values)
        except ClipsanError as exc:
            if not _printed_by_rank_0(exc):
                print(f"clipsan {name}: {exc}", file=sys.stderr)
            if getattr(exc, "shared", False):
                # torchrun SIGTERMs the ranks still running once one exits; every rank is already
                # leaving with this same code, so let each finish with it instead of dying by signal.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            print(f"clipsan {name}: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except BrokenPipeError:
            # e.g. `clipsan eval ... | head`: not an error of ours.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
        if code:
            raise SystemExit(code)

    return run
