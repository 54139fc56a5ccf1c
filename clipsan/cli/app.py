"""The Typer application: one command per module, plain help when piped, errors -> exit codes."""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Annotated

import typer
from typer.core import TyperCommand

from clipsan import __version__
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


app = typer.Typer(
    name="clipsan",
    help="Scan, purify and evaluate downloaded CLIP checkpoints for backdoors.",
    epilog="Exit codes: 0 success; 1 scan found backdoor evidence; 2 bad input or usage; 3 interrupted after writing a resumable checkpoint.",
    rich_markup_mode="rich" if rich_output() else None,
    pretty_exceptions_enable=False,
    add_completion=False,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


def command(name: str, summary: str, help: str, examples: list[str]):
    """Register a command (its option groups spread) whose help ends with real examples."""
    epilog = "Examples:\n" + "\n".join(f"  {line}" for line in examples)

    def register(func):
        run = _exit_codes(name, with_option_groups(func))
        app.command(name, short_help=summary, help=help, epilog=epilog, cls=None if rich_output() else PanelCommand)(run)
        return func

    return register


def _version(value: bool) -> None:
    if value:
        print(f"clipsan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False) -> None:
    """Scan, purify and evaluate downloaded CLIP checkpoints for backdoors."""


def load_commands() -> None:
    # In the order `clipsan --help` lists them.
    from clipsan.cli import scan, purify, craft_adv, evaluate, poison, lab  # noqa: F401, I001 - they register themselves
