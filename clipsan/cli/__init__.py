"""clipsan's command line: parse, dispatch, and map errors to exit codes.

Each command lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``; the work itself is done by library functions.
"""

from __future__ import annotations

import argparse
import os
import sys

from clipsan import __version__
from clipsan.errors import ClipsanError

COMMAND_MODULES = ("scan", "purify", "craft_adv", "eval", "poison", "lab")


def _available_commands():
    import importlib

    for name in COMMAND_MODULES:
        try:
            yield importlib.import_module(f"clipsan.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            # A command whose module is not part of this build is simply not offered.
            if exc.name != f"clipsan.cli.{name}_cmd":
                raise


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # Scripts must spell options out: an abbreviation that works today
        # (``--ep`` for ``--epochs``) becomes ambiguous when an option is added.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clipsan",
        description="Scan, purify and evaluate downloaded CLIP checkpoints for backdoors.",
        epilog="Exit codes: 0 success; 1 scan found backdoor evidence; 2 bad input or usage; "
        "3 interrupted after writing a resumable checkpoint.",
    )
    parser.add_argument("--version", action="version", version=f"clipsan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in _available_commands():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ClipsanError as exc:
        print(f"clipsan {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"clipsan {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # e.g. `clipsan eval ... | head`: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    sys.exit(main())
