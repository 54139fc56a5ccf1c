"""The training step never waits for the device, and the speed switches work on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, cli_env, run_cli, run_json

PROBE = REPO / "benchmarks" / "host_reads.py"
STEPS, LOG_EVERY = 20, 10
# Batch 2 of the 64 fixture pairs: 32 steps per epoch, so no epoch-end checkpoint inside the 20 steps.
SHORT = ["--device", "cpu", "--batch-size", "2", "--max-steps", str(STEPS), "--log-every", str(LOG_EVERY), "--save-every", "1000", "--workers", "1"]


def _purify(model, data, tmp_path, method, *extra) -> list[str]:
    return [
        "purify",
        str(model),
        "--method",
        method,
        "--data",
        str(data),
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "o.safetensors"),
        *SHORT,
        *extra,
    ]


def _reads(counts_file: Path) -> int:
    return json.loads(counts_file.read_text())["total"]


@pytest.mark.parametrize("method", ["ft", "cleanclip", "cleanerclip"])
def test_training_reads_the_device_only_at_log_steps(method, tiny_model, caption_data, tmp_path):
    counts = tmp_path / "counts"
    cmd = [sys.executable, str(PROBE), str(counts), *_purify(tiny_model, caption_data, tmp_path, method)]
    proc = subprocess.run(cmd, env={**cli_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logged = STEPS // LOG_EVERY
    reads = _reads(Path(f"{counts}.0"))
    assert 0 < reads <= 3 * logged, f"{reads} host reads in {STEPS} steps with {logged} log steps: {Path(f'{counts}.0').read_text()}"


@pytest.mark.parametrize("method", ["ft", "cleanclip"])
def test_two_processes_read_the_device_only_at_log_steps(method, tiny_model, caption_data, tmp_path):
    counts = tmp_path / "counts"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(PROBE), str(counts)]
    proc = subprocess.run(
        [*cmd, *_purify(tiny_model, caption_data, tmp_path, method)], env={**cli_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = STEPS // LOG_EVERY
    for rank in (0, 1):
        reads = _reads(Path(f"{counts}.{rank}"))
        assert 0 < reads <= 3 * logged, f"rank {rank}: {reads} host reads in {STEPS} steps with {logged} log steps"


def test_nan_between_log_steps_is_never_checkpointed(tiny_model, caption_data, tmp_path):
    # The loss is read only at log steps (never here) and before checkpoints (every 3 steps).
    args = _purify(tiny_model, caption_data, tmp_path, "ft", "--lr", "1e30", "--warmup", "0")
    args[args.index("--log-every") + 1] = "100"
    args[args.index("--save-every") + 1] = "3"
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    # notes (the model, the data, the held-out split, its retrieval and backdoor check), then the one-line error, last
    assert "loss became" in proc.stderr.strip().splitlines()[-1] and proc.stderr.count("loss became") == 1, proc.stderr
    bad_step = int(proc.stderr.split(" at step ")[1].split()[0])
    kept = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert all(int(p.name.split("-")[1]) < bad_step for p in kept)
    for ckpt in kept:
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "weights.safetensors")).values())
    assert not (tmp_path / "o.safetensors").exists()


def test_speed_switches_run_on_cpu_and_keep_eager_results(tiny_model, caption_data, tmp_path):
    base = ["--max-steps", "3", "--batch-size", "8", "--device", "cpu", "--workers", "0", "--lr", "1e-4"]
    plain = run_json("purify", tiny_model, "--method", "ft", "--data", caption_data, "--run-dir", tmp_path / "a", "--out", tmp_path / "a.safetensors", *base)
    switched = run_json(
        "purify", tiny_model, "--method", "ft", "--data", caption_data, "--run-dir", tmp_path / "b", "--out", tmp_path / "b.safetensors",
        *base, "--grad-checkpointing", "--deterministic",
    )  # fmt: skip
    assert plain["steps"] == switched["steps"] == 3
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "recomputed activations and deterministic kernels must not change CPU fp32 results"


def test_compile_runs_the_compiled_towers_and_stays_close_to_eager(tiny_model, caption_data, tmp_path, monkeypatch):
    """--compile end to end in-process. Inductor's C++ code generation takes minutes on CPU, so the
    towers are compiled with the aot_eager backend: dynamo's trace and AOT autograd's forward/backward
    graphs are real, only the kernels are PyTorch's own."""
    import torch._dynamo

    from clipsan.cli import main
    from clipsan.models import ClipModel

    compiled, real_compile = [], ClipModel.compile_encoders
    monkeypatch.setattr(ClipModel, "compile_encoders", lambda self: compiled.append(self) or real_compile(self, backend="aot_eager"))
    base = ["--max-steps", "3", "--batch-size", "8", "--device", "cpu", "--workers", "0", "--lr", "1e-4", "--format", "json"]
    try:
        for name, extra in (("eager", []), ("compiled", ["--compile"])):
            argv = ["purify", tiny_model, "--method", "ft", "--data", caption_data, "--run-dir", tmp_path / name, "--out", tmp_path / f"{name}.safetensors"]
            assert main([str(a) for a in argv + base + extra]) == 0
    finally:
        torch._dynamo.reset()
    assert len(compiled) == 1
    eager, compiled_weights = load_file(str(tmp_path / "eager.safetensors")), load_file(str(tmp_path / "compiled.safetensors"))
    assert eager.keys() == compiled_weights.keys()  # compiling in place keeps the state_dict's names
    worst = max((eager[k].float() - compiled_weights[k].float()).abs().max().item() for k in eager)
    assert 0 < worst < 1e-3, worst  # channels-last convolutions round differently, not far


def test_gpu_benchmark_says_so_without_cuda_and_runs_its_cpu_smoke(tmp_path):
    script = REPO / "benchmarks" / "gpu.py"
    env = {**cli_env(), "PYTHONPATH": str(REPO)}
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0 and "no CUDA" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run(
        [sys.executable, str(script), "--cpu-smoke", "--steps", "2", "--work", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:3] == ["arch", "recipe", "images/s"] and "host syncs" in header and "× ft" in header
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]
    assert {r["recipe"] for r in rows} >= {"ft", "cleanclip", "cleanerclip", "abd craft", "abd fine-tune", "scan", "eval"}
    assert all(float(r["images/s"]) > 0 for r in rows)
    assert next(r for r in rows if r["recipe"] == "ft")["× ft"] == "1.00"
