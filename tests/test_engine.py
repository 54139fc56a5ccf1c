"""The training engine as users meet it through `clipsan purify --method ft`."""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli_env, run_cli, run_json

TRAIN = ["--epochs", "3", "--batch-size", "16", "--lr", "1e-4", "--warmup", "2", "--save-every", "1", "--log-every", "1"]


def purify_args(model, data, run_dir, out, *extra):
    return ["purify", model, "--method", "ft", "--data", data, "--run-dir", run_dir, "--out", out, "--device", "cpu", *TRAIN, *extra]


def weights(path) -> dict:
    return load_file(str(path))


def assert_bitwise_equal(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference_run(tiny_model, caption_data, tmp_path_factory):
    """An uninterrupted run that the interrupted ones must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    report = run_json(*purify_args(tiny_model, caption_data, root / "run", root / "out.safetensors", "--workers", "0"))
    return root, report


def test_ft_run_writes_model_config_metrics_and_checkpoints(reference_run, tiny_model):
    root, report = reference_run
    assert report["method"] == "ft" and report["steps"] == 9  # 64 pairs less 3 held out (5%) / 16 x 3 epochs
    assert report["arch"] == "clipsan-tiny-rn" and report["arch_source"] == "metadata"
    out = weights(root / "out.safetensors")
    before = weights(tiny_model)
    assert any(not torch.equal(out[k], before[k]) for k in out), "training changed nothing"
    config = json.loads((root / "run" / "config.json").read_text())
    assert config["method"] == "ft" and config["training"]["batch_size"] == 16
    assert len(config["inputs"]["model"]["sha256"]) == 64
    lines = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 10))
    assert all({"lr", "loss", "loss_clip", "epoch", "images_per_s"} <= r.keys() for r in lines)
    # warmup really happens: lr rises over the first 2 steps, then decays to ~0
    assert lines[0]["lr"] < lines[1]["lr"] and lines[-1]["lr"] < lines[2]["lr"]
    kept = sorted(p.name for p in (root / "run" / "checkpoints").iterdir())
    assert kept == ["step-000000008", "step-000000009"]  # the last two


def test_workers_do_not_change_results(reference_run, tiny_model, caption_data, tmp_path):
    root, _ = reference_run
    run_json(*purify_args(tiny_model, caption_data, tmp_path / "run", tmp_path / "out.safetensors", "--workers", "2"))
    assert_bitwise_equal(root / "out.safetensors", tmp_path / "out.safetensors")


def _start(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clipsan", *map(str, args)], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpts = run_dir / "checkpoints"
        if ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir()):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _epoch_utility(run_dir: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["utility"] for r in lines if "utility" in r}


def test_sigkill_then_resume_is_bitwise_equal(reference_run, tiny_model, caption_data, tmp_path):
    root, reference = reference_run
    args = purify_args(tiny_model, caption_data, tmp_path / "run", tmp_path / "out.safetensors", "--workers", "0")
    proc = _start(args)
    _wait_for_checkpoint(tmp_path / "run", proc)
    proc.kill()
    proc.wait()
    assert not (tmp_path / "out.safetensors").exists(), "run finished before it could be killed"
    report = run_json(*args, "--resume")
    assert report["resumed_from_step"] is not None and report["resumed_from_step"] < 9
    assert_bitwise_equal(root / "out.safetensors", tmp_path / "out.safetensors")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 10)), "the resumed log should read like an uninterrupted one"
    # the held-out split and its retrieval are the same too, before, at every epoch end and after
    assert report["holdout"] == reference["holdout"] and report["utility"] == reference["utility"]
    assert _epoch_utility(tmp_path / "run") == _epoch_utility(root / "run") and len(_epoch_utility(root / "run")) == 3


def test_sigterm_checkpoints_exits_3_and_resumes(reference_run, tiny_model, caption_data, tmp_path):
    root, _ = reference_run
    args = purify_args(tiny_model, caption_data, tmp_path / "run", tmp_path / "out.safetensors", "--workers", "0")
    proc = _start(args)
    _wait_for_checkpoint(tmp_path / "run", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "--resume" in err
    run_json(*args, "--resume")
    assert_bitwise_equal(root / "out.safetensors", tmp_path / "out.safetensors")


def test_resume_refuses_changed_options(reference_run, tiny_model, caption_data):
    root, _ = reference_run
    args = purify_args(tiny_model, caption_data, root / "run", root / "other.safetensors")
    args[args.index("--lr") + 1] = "5e-4"
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 2 and "lr" in proc.stderr and "Traceback" not in proc.stderr


def test_adam_betas_are_options_recorded_and_checked(reference_run, tiny_model, caption_data, tmp_path):
    root, _ = reference_run
    config = json.loads((root / "run" / "config.json").read_text())
    assert config["training"]["betas"] == [0.9, 0.999] and config["training"]["eps"] == 1e-8
    resumed = run_cli(*purify_args(tiny_model, caption_data, root / "run", root / "b.safetensors"), "--beta2", "0.98", "--resume")
    assert resumed.returncode == 2 and "betas" in resumed.stderr
    bad = run_cli(*purify_args(tiny_model, caption_data, tmp_path / "run", tmp_path / "b.safetensors"), "--beta2", "1.0")
    assert bad.returncode == 2 and "--beta2" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b.safetensors").exists()


def test_existing_run_dir_needs_resume(reference_run, tiny_model, caption_data):
    root, _ = reference_run
    proc = run_cli(*purify_args(tiny_model, caption_data, root / "run", root / "x.safetensors"))
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_locked_run_dir_is_refused(tiny_model, caption_data, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "run.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_cli(*purify_args(tiny_model, caption_data, run_dir, tmp_path / "o.safetensors"))
    assert proc.returncode == 2 and "in use" in proc.stderr


def test_nan_loss_stops_with_exit_2_and_keeps_last_good_checkpoint(tiny_model, caption_data, tmp_path):
    args = purify_args(tiny_model, caption_data, tmp_path / "run", tmp_path / "o.safetensors", "--workers", "0")
    args[args.index("--lr") + 1] = "1e30"
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "loss became" in proc.stderr and "step" in proc.stderr
    assert not (tmp_path / "o.safetensors").exists()
    kept = list((tmp_path / "run" / "checkpoints").glob("step-*"))
    for ckpt in kept:  # whatever was kept holds finite weights
        assert all(torch.isfinite(t).all() for t in weights(ckpt / "weights.safetensors").values())
