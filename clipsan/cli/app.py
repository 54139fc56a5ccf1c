"""The Typer application: every command registered here, in the order `clipsan --help` lists them."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsan import __version__
from clipsan.cli import calibrate, craft_adv, evaluate, lab, poison, purify, scan
from clipsan.cli.command import Command, PanelCommand, rich_output

COMMANDS: tuple[Command, ...] = (scan.COMMAND, calibrate.COMMAND, purify.COMMAND, craft_adv.COMMAND, evaluate.COMMAND, poison.COMMAND, lab.COMMAND)
EXIT_CODES = (
    "Exit codes: 0 success; 1 scan found backdoor evidence, or purify --until-clean / --require-clean wrote a model that does not pass "
    "the backdoor check; 2 bad input or usage; 3 interrupted after writing a resumable checkpoint."
)


def _version(value: bool) -> None:
    if value:
        print(f"clipsan {__version__}")
        raise typer.Exit()


def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False) -> None:
    """Scan, purify and evaluate downloaded CLIP checkpoints for backdoors."""


def build_app() -> typer.Typer:
    """The Typer app with every command registered."""
    app = typer.Typer(
        name="clipsan",
        help="Scan, purify and evaluate downloaded CLIP checkpoints for backdoors.",
        epilog=EXIT_CODES,
        rich_markup_mode="rich" if rich_output() else None,
        pretty_exceptions_enable=False,
        add_completion=False,
        no_args_is_help=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    for command in COMMANDS:
        app.command(command.name, short_help=command.summary, help=command.help, epilog=command.epilog, cls=None if rich_output() else PanelCommand)(
            command.callback()
        )
    return app
