"""clipsan's command line: a Typer app over ``clipsan.api`` (one module per command, registered in app.py).

Building the app and printing help import no torch; a command imports the
library only when it runs.
"""

from __future__ import annotations

import sys


def click_command():
    """The app as a Click command (the man page and the tests introspect it)."""
    import typer.main

    from clipsan.cli.app import build_app

    return typer.main.get_command(build_app())


def main(argv: list[str] | None = None) -> int:
    try:
        click_command().main(args=argv, prog_name="clipsan", standalone_mode=True)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 2)
    return 0


def entry() -> None:
    sys.exit(main())
