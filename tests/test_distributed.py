"""Data parallelism: 2 processes under torchrun match 1 process with the same global batch."""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import cli_env, run_json, without_key_biases

ARGS = ["--epochs", "2", "--batch-size", "16", "--lr", "1e-4", "--warmup", "2", "--workers", "0", "--device", "cpu"]


@pytest.mark.parametrize("method", ["ft", "par"])  # par: its thresholded distances are global-batch means too
def test_two_processes_match_one(tiny_model, caption_data, tmp_path, method):
    # The tiny arch is a ResNet tower: its BatchNorm layers stay frozen (default), so
    # shard-local batch statistics cannot make the two runs differ.
    single = tmp_path / "single.safetensors"
    run_json("purify", tiny_model, "--method", method, "--data", caption_data, "--out", single, "--run-dir", tmp_path / "r1", *ARGS)

    double = tmp_path / "double.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "clipsan",
        "purify",
        str(tiny_model),
        "--method",
        method,
        "--data",
        str(caption_data),
        "--out",
        str(double),
        "--run-dir",
        str(tmp_path / "r2"),
        *ARGS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = without_key_biases(load_file(str(single))), without_key_biases(load_file(str(double)))
    before = without_key_biases(load_file(str(tiny_model)))
    moved = max((a[k] - before[k]).abs().max().item() for k in a)
    assert moved > 1e-4, "training must move the weights for the comparison to mean anything"
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4 * max(1.0, moved), f"largest difference {worst:g} (weights moved by up to {moved:g})"


def _torchrun(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "clipsan", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600)


def test_a_run_dir_locked_elsewhere_ends_both_ranks_with_exit_2_and_one_message(tiny_model, caption_data, tmp_path):
    # Only rank 0 takes the lock: without the runtime sharing its verdict, rank 1 went on
    # into training and died in a collective with gloo's "Connection closed by peer".
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "run.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another clipsan process holds it
        proc = _torchrun("purify", tiny_model, "--method", "ft", "--data", caption_data, "--run-dir", run, *ARGS)
    message = f"clipsan purify: {run}: run directory is in use by another clipsan process"
    assert proc.stderr.count(message) == 1, proc.stderr[-3000:]
    # torchrun's failure summary lists each rank's exit code.
    assert re.findall(r"exitcode\s+: (-?\d+) \(pid", proc.stderr) == ["2", "2"], proc.stderr[-3000:]
    assert "[rank" not in proc.stderr  # no worker traceback
    assert not (run / "checkpoints").exists() and not (run / "config.json").exists()
