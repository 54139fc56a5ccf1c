"""The lab loses nothing either: a full disk while it writes its world, its stage records or its
tables (lab.json, lab.md, pareto.png) is one line naming the file, the earlier tables stay whole;
a stage that hit a full disk is named with its own line; a killed lab stops its stages."""

from __future__ import annotations

import errno
import shutil
import sys

import pytest
from faults import ERRORS, FaultyDisk, full_sweep, incomplete_files, sweep_points, temporary_leftovers
from test_lab_tables import rows

from clipsan.config.lab import LabConfig
from clipsan.data import world
from clipsan.errors import UserError
from clipsan.lab.jobs import Job
from clipsan.lab.runner import LabReport, _run_or_fail, write_report


def _fail_each_write(root, write, points: int = 8, check=lambda: None) -> list[str]:
    """Run ``write`` failing each chosen write under ``root`` (then ``check``); returns the messages."""
    with FaultyDisk(root) as counting:
        write()
    messages = []
    for n in sweep_points(len(counting.writes), 5, full_sweep(), points):
        with FaultyDisk(root, fail_at=n, error=ERRORS[n % len(ERRORS)]) as disk, pytest.raises(UserError) as failed:
            write()
        assert disk.failed is not None
        message = str(failed.value)
        assert "\n" not in message and message.endswith(f": cannot write ({disk.error().strerror})"), message
        assert not temporary_leftovers(root) and not incomplete_files(root)
        check()
        messages.append(message)
    return messages


def test_lab_tables_full_disk_keeps_the_previous_tables(tmp_path):
    out, names = tmp_path / "lab", ("lab.json", "lab.md", "pareto.png")
    write_report(LabConfig(out=out), LabReport(rows=rows(), scan=[], timings={"total": 1.0}))
    newer = LabReport(rows=rows()[:3], scan=[], timings={"total": 2.0})
    write_report(LabConfig(out=tmp_path / "newer"), newer)
    before = {name: (out / name).read_bytes() for name in names}
    after = {name: (tmp_path / "newer" / name).read_bytes() for name in names}

    def each_table_is_whole() -> None:  # the earlier one or the newer one: never cut short, never a mix
        for name in names:
            assert (out / name).read_bytes() in (before[name], after[name]), name

    messages = _fail_each_write(out, lambda: write_report(LabConfig(out=out), newer), points=9, check=each_table_is_whole)
    assert {m.split(":")[0].rsplit("/", 1)[-1] for m in messages} == set(names)


def test_world_full_disk_leaves_no_partial_image(tmp_path):
    def write() -> None:
        shutil.rmtree(tmp_path / "train", ignore_errors=True)  # the lab starts a world over unless it was stamped complete
        world.write_caption_dataset(tmp_path / "train", 6, seed=0)

    _fail_each_write(tmp_path, write, points=6)


def test_a_stage_that_hit_a_full_disk_is_named_with_its_own_line(tmp_path):
    line = f"clipsan purify: {tmp_path}/runs/x/checkpoints/step-000000002/state.pt: cannot write ({errno.errorcode[errno.ENOSPC]})"

    class FullDiskStage(Job):
        def command(self, argv: list[str]) -> list[str]:
            return [sys.executable, "-c", f"import sys; print({line!r}, file=sys.stderr); sys.exit(2)"]

    job = FullDiskStage("defense-x", ["purify", "--run-dir", str(tmp_path / "runs" / "x")], tmp_path / "logs")
    with pytest.raises(UserError) as failed:
        _run_or_fail([job], LabConfig(out=tmp_path, parallel=1))
    assert line in str(failed.value) and "defense-x (exit 2" in str(failed.value)
