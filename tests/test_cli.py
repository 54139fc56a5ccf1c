"""The command line as scripts meet it: help, version, man page, exit codes."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

from clipsan.cli import build_parser
from clipsan.cli.manpage import render, subcommands
from conftest import REPO, run_cli


def test_version_and_help_list_only_working_commands():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("clipsan ")
    proc = run_cli("--help")
    assert proc.returncode == 0
    listed = set(subcommands(build_parser()))
    assert {"eval", "purify", "lab"} <= listed
    for name in listed:  # every listed command answers its own --help
        sub = run_cli(name, "--help")
        assert sub.returncode == 0 and name in sub.stdout


def test_usage_errors_exit_2_without_traceback():
    for args in (["no-such-command"], ["purify"], ["eval", "m.safetensors"]):
        proc = run_cli(*args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr


def test_abbreviated_options_are_refused():
    # A script's "--dat" must not silently mean "--data" (nor something else once options are added).
    parser = build_parser()
    assert parser.parse_args(["eval", "m.safetensors", "--data", "d/"]).data
    proc = run_cli("eval", "m.safetensors", "--data", "d/", "--targ", "banana")
    assert proc.returncode == 2 and "unrecognized arguments: --targ" in proc.stderr


def test_committed_man_page_is_current():
    committed = (REPO / "man" / "clipsan.1").read_text()
    assert committed == render(build_parser()), "regenerate: python -m clipsan.cli.manpage > man/clipsan.1"


def test_man_page_renders_and_documents_every_command_and_option():
    env = dict(os.environ, MANWIDTH="200", MANPAGER="cat", PAGER="cat")
    proc = subprocess.run(["man", "-l", str(REPO / "man" / "clipsan.1")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r".\x08", "", proc.stdout)  # strip overstrike bold
    text = text.replace("\u2010", "-").replace("\u2212", "-")
    for name, sub in subcommands(build_parser()).items():
        assert f"clipsan {name}" in text
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue  # -h/--help is documented once, not per command
            for option in action.option_strings:
                assert option in text, f"{option} of {name} is missing from the man page"


def test_readme_has_a_section_per_command():
    readme = (REPO / "README.md").read_text()
    for name in subcommands(build_parser()):
        assert re.search(rf"^###? .*clipsan {re.escape(name)}\b", readme, re.M), f"README lacks a section for {name}"
