"""The fuzz targets (fuzz/, README there) in CI: every committed seed and every input that once
crashed a reader goes through its target in process (a reader accepts it or refuses it with one
UserError line), and each target runs briefly under atheris from its seed corpus.

The long campaign (millions of inputs per reader) runs outside CI: ``python -m fuzz.campaign``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, cli_env

FUZZ = REPO / "fuzz"
TARGETS = sorted(p.name for p in (FUZZ / "corpus").iterdir())
CI_SECONDS = 1  # per target under atheris


def _inputs(folder: str) -> list:
    return [pytest.param(path, id=f"{path.parent.name}/{path.name}") for path in sorted((FUZZ / folder).glob("*/*"))]


def test_every_reader_has_a_seed_corpus():
    from fuzz.targets import TARGETS as REGISTERED

    assert set(TARGETS) == set(REGISTERED)


@pytest.mark.parametrize("path", _inputs("corpus") + _inputs("regressions"))
def test_seed_and_regression_inputs_are_accepted_or_refused_in_one_line(path):
    from fuzz.targets import TARGETS as REGISTERED
    from fuzz.targets import run_one

    run_one(REGISTERED[path.parent.name], path.read_bytes())


def test_every_target_runs_briefly_under_the_fuzzer(tmp_path):
    pytest.importorskip("atheris")
    # One process for all targets (each in a forked child): the instrumented imports cost more than the fuzzing.
    cmd = [sys.executable, "-m", "fuzz", "--each", str(tmp_path), f"-max_total_time={CI_SECONDS}", "-seed=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=600)
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("*/*") if p.name.startswith(("crash-", "timeout-", "oom-")))
    assert proc.returncode == 0 and not found, f"{found}\n" + "\n".join(proc.stderr.splitlines()[-40:])
    assert sorted(line.split()[1].rstrip(":") for line in proc.stderr.splitlines() if line.startswith("fuzz ")) == TARGETS
