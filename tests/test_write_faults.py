"""A full disk loses nothing (DESIGN §8, README "Conventions"): a write that fails at any point of a
short purify, poison or scan (a checkpoint, the output model, a report, a PNG, a log line) ends the
command with exit 2 and one line naming the file and the cause; every file under a final name is
whole (earlier checkpoints load), no temporary file is left, and the same command run again
(``--resume`` for training) ends with the same result as a run that never failed.

The disk is ``tests/faults.FaultyDisk`` (in process: fast). CI fails a seeded handful of the writes
and resumes after some of them; CLIPSAN_FAULT_SWEEP=full fails every write and resumes after each.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from faults import ERRORS, FaultyDisk, assert_one_line_write_error, full_sweep, incomplete_files, same_tensors, scan_report, sweep_points, temporary_leftovers

from clipsan.cli import main
from conftest import run_cli

TRAIN = ["--device", "cpu", "--max-steps", "2", "--batch-size", "8", "--save-every", "1", "--log-every", "1", "--workers", "0", "--format", "json"]
POINTS, RESUMES = 6, 2  # CI: writes failed, and resumed after, per command


def _cli(capsys, argv: list) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sweep(tmp_path, capsys, command: str, argv_of, compare, *, seed: int, resume_flag: bool, points: int = POINTS, resumes: int = RESUMES) -> None:
    """Run once counting the writes, then again failing each chosen one; after some, run again to the end."""
    reference = tmp_path / "reference"
    reference.mkdir()
    with FaultyDisk(reference) as disk:
        code, _, err = _cli(capsys, argv_of(reference))
    assert code == 0, err[-2000:]
    writes = disk.writes
    points = sweep_points(len(writes), seed, full_sweep(), points)
    resumed = set(points if full_sweep() else points[-resumes:])  # the last writes: a run far in, with its checkpoints
    for n in points:
        root = tmp_path / f"fail-{n}"
        root.mkdir()
        with FaultyDisk(root, fail_at=n, error=ERRORS[n % len(ERRORS)]) as disk:
            code, _, err = _cli(capsys, argv_of(root))
        where = f"write {n} of {len(writes)} ({writes[n - 1][0]} {Path(writes[n - 1][1]).name})"
        assert disk.failed is not None, f"{where}: the run made fewer writes than the uninterrupted one"
        assert code == 2, f"{where}: exit {code}\n{err[-2000:]}"
        assert_one_line_write_error(err, command, disk)
        assert not temporary_leftovers(root), where
        assert not incomplete_files(root), where
        if n in resumed:
            code, _, err = _cli(capsys, argv_of(root) + (["--resume"] if resume_flag else []))
            assert code == 0, f"{where}, then again: exit {code}\n{err[-2000:]}"
            compare(reference, root)


def _same_model(name: str):
    def compare(reference: Path, root: Path) -> None:
        assert not same_tensors(reference / name, root / name), "the run continued after the failed write ended elsewhere"

    return compare


def test_purify_full_disk_at_any_write(tiny_model, caption_data, tmp_path, capsys):
    def argv(root: Path) -> list:
        return ["purify", tiny_model, "--method", "ft", "--data", caption_data, "--run-dir", root / "run", "--out", root / "out.safetensors", *TRAIN]

    _sweep(tmp_path, capsys, "purify", argv, _same_model("out.safetensors"), seed=1, resume_flag=True)


def test_purify_into_an_open_clip_folder_full_disk(tiny_model, caption_data, tmp_path, capsys):
    """An output folder (config and weights) is written beside OUT and renamed: never half there."""

    def argv(root: Path) -> list:
        out = ["--out", root / "out", "--out-format", "open_clip"]
        return ["purify", tiny_model, "--method", "ft", "--data", caption_data, "--run-dir", root / "run", *out, *TRAIN]

    _sweep(tmp_path, capsys, "purify", argv, _same_model("out/open_clip_model.safetensors"), seed=2, resume_flag=True)


def test_poison_with_badclip_patch_full_disk(tiny_model, caption_data, tmp_path, capsys):
    patch = ["--trigger", "badclip", "--rate", "0.1", "--trigger-size", "6", "--patch-epochs", "1", "--patch-images", "16", "--patch-batch-size", "8"]

    def argv(root: Path) -> list:
        return ["poison", tiny_model, "--data", caption_data, *patch, "--run-dir", root / "run", "--out", root / "victim.safetensors", *TRAIN]

    _sweep(tmp_path, capsys, "poison", argv, _same_model("victim.safetensors"), seed=3, resume_flag=True)


def test_scan_of_two_models_full_disk(tiny_model, tmp_path, capsys):
    def argv(root: Path) -> list:
        out = ["--output", root / "report.json"]
        return ["scan", tiny_model, tiny_model, "--run-dir", root / "scan", "--steps", "2", "--probes", "8", "--device", "cpu", "--format", "json", *out]

    def compare(reference: Path, root: Path) -> None:
        assert scan_report(root / "scan" / "scan.json", root) == scan_report(reference / "scan" / "scan.json", reference)

    # Scanning costs more than training these tiny models (naming the target encodes the word banks): fewer points.
    _sweep(tmp_path, capsys, "scan", argv, compare, seed=4, resume_flag=False, points=3, resumes=1)


@pytest.mark.parametrize("error", ERRORS)
def test_the_failed_write_is_named_with_its_cause(tiny_model, caption_data, tmp_path, capsys, error):
    """The issue's report: the disk fills at the second checkpoint's training state (PyTorch's zip writer)."""

    def argv(name: str) -> list:
        return ["purify", tiny_model, "--method", "ft", "--data", caption_data, "--run-dir", tmp_path / name, "--out", tmp_path / f"{name}.safetensors", *TRAIN]

    with FaultyDisk(tmp_path) as counting:
        _cli(capsys, argv("count"))
    states = [i for i, (kind, path) in enumerate(counting.writes, 1) if kind == "open" and path.endswith("state.pt")]
    with FaultyDisk(tmp_path, fail_at=states[1], error=error) as disk:
        code, _, err = _cli(capsys, argv("run"))
    assert code == 2
    named = assert_one_line_write_error(err, "purify", disk)
    assert named == str(tmp_path / "run" / "checkpoints" / "step-000000002" / "state.pt")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000000001"]
    assert not incomplete_files(tmp_path / "run") and not temporary_leftovers(tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    """A real 150 MB filesystem (tmpfs; needs root), grown by calling the fixture's value."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=1g", str(mount)], check=True)

    try:
        yield mount, grow
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_at_the_second_checkpoint_then_resume(tiny_model, caption_data, small_disk):
    """The issue's report, on a real filesystem: a 150 MB run dir fills at the second checkpoint (~96 MB each)."""
    disk, grow = small_disk
    args = ["purify", tiny_model, "--method", "ft", "--data", caption_data, "--run-dir", disk / "run", "--out", disk / "out.safetensors", *TRAIN]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"clipsan purify: {re.escape(str(disk))}/run/checkpoints/step-000000002/\S+: cannot write \(No space left on device\)", last), last
    assert [p.name for p in (disk / "run" / "checkpoints").iterdir()] == ["step-000000001"]
    assert not incomplete_files(disk) and not temporary_leftovers(disk)
    grow()
    report = json.loads(run_cli(*args, "--resume").stdout)
    assert report["resumed_from_step"] == 1 and report["steps"] == 2
