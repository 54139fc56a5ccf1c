"""The command line as scripts meet it: help, version, man page, usage errors and exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from clipsan.cli import click_command, main
from clipsan.cli.manpage import command_sections, render
from conftest import REPO, cli_env, run_cli

COMMANDS = ["scan", "calibrate", "purify", "craft-adv", "eval", "poison", "lab"]


def test_version_and_help_list_the_commands_in_order():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("clipsan ")
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert list(command_sections(click_command())) == COMMANDS
    listing = proc.stdout.split("Commands:")[1].split("Exit codes")[0]
    listed = [line.split()[0] for line in listing.splitlines() if line.startswith("  ") and not line.startswith("   ") and line.strip()]
    assert listed == COMMANDS
    for name in COMMANDS:  # every listed command answers its own --help, ending with real examples
        sub = run_cli(name, "--help")
        assert sub.returncode == 0 and f"clipsan {name}" in sub.stdout
        examples = sub.stdout.split("Examples:")[1].strip().splitlines()
        assert 2 <= len(examples) <= 3 and all(line.strip().startswith("clipsan ") for line in examples)


def test_help_is_plain_when_piped_and_imports_no_torch():
    code = (
        "import sys\n"
        "from clipsan.cli import main\n"
        f"for argv in ([], ['--help'], *([c, '--help'] for c in {COMMANDS!r})):\n"
        "    main(argv)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision', 'numpy', 'PIL'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert "HEAVY []" in proc.stderr, proc.stderr[-2000:]
    assert "\x1b[" not in proc.stdout and not set("╭─│╰") & set(proc.stdout)  # no colour codes, no boxes
    assert "Training:" in proc.stdout and "--method cleanerclip:" in proc.stdout  # panels survive as sections


def test_usage_errors_exit_2_without_traceback():
    for args in (["no-such-command"], ["purify"], ["eval", "m.safetensors"], ["purify", "m", "--method", "nope", "--data", "."]):
        proc = run_cli(*args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr


def test_mistyped_command_and_unknown_option_name_the_closest():
    proc = run_cli("purfy", "m.safetensors")
    assert proc.returncode == 2 and "Did you mean 'purify'?" in proc.stderr
    # A script's "--targ" must not silently mean "--target" (nor something else once options are added).
    proc = run_cli("eval", "m.safetensors", "--data", ".", "--targ", "banana")
    assert proc.returncode == 2 and "No such option: --targ" in proc.stderr and "--target" in proc.stderr


def test_an_option_of_another_method_is_refused():
    for method, flag, value, owner in (
        ("ft", "--t-pos", "0.5", "cleanerclip"),
        ("cleanclip", "--bd-weight", "5", "abd"),
        ("abd", "--clip-weight", "2", "cleanclip and cleanerclip"),
    ):
        proc = run_cli("purify", "m.safetensors", "--method", method, flag, value, "--data", REPO)
        assert proc.returncode == 2, proc.stderr
        assert f"{flag} applies to --method {owner}" in proc.stderr and "Traceback" not in proc.stderr
    # ...while the recipe's own options and the shared ones pass parsing (the missing model is what stops it).
    proc = run_cli("purify", "missing.safetensors", "--method", "cleanerclip", "--t-pos", "0.5", "--clip-weight", "2", "--data", REPO / "tests")
    assert proc.returncode == 2 and "applies to" not in proc.stderr


def test_lab_refuses_an_attack_outside_its_budget_before_writing_anything(tmp_path, capsys):
    # In-process (the same main() as `python -m clipsan`): saves a process start-up that imports torch and open_clip.
    out = tmp_path / "lab"
    assert main(["lab", "--quick", "--attacks", "badnet,nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["clipsan lab: --attacks: unknown attack 'nope'; the quick budget's attacks are badnet, blended, badclip"]
    assert not out.exists()
    out.mkdir()  # an attack of the full budget only, into an existing --out
    assert main(["lab", "--quick", "--attacks", "sig", "--out", str(out)]) == 2
    assert "clipsan lab: --attacks: 'sig' is not in the quick budget" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_committed_man_page_is_current():
    committed = (REPO / "man" / "clipsan.1").read_text()
    assert committed == render(click_command()), "regenerate: python -m clipsan.cli.manpage > man/clipsan.1"


def test_man_page_renders_and_documents_every_command_and_option():
    env = dict(os.environ, MANWIDTH="200", MANPAGER="cat", PAGER="cat")
    proc = subprocess.run(["man", "-l", str(REPO / "man" / "clipsan.1")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r".\x08", "", proc.stdout)  # strip overstrike bold
    text = text.replace("\u2010", "-").replace("\u2212", "-")
    for name, command in command_sections(click_command()).items():
        assert f"clipsan {name}" in text
        for param in command.params:
            for option in param.opts if param.param_type_name == "option" else []:
                assert option in text, f"{option} of {name} is missing from the man page"


def test_readme_has_a_section_per_command():
    readme = (REPO / "README.md").read_text()
    for name in command_sections(click_command()):
        assert re.search(rf"^###? .*clipsan {re.escape(name)}\b", readme, re.M), f"README lacks a section for {name}"
