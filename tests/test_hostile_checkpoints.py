"""Hostile checkpoints (issue #15 items 2 and 6): non-finite weights, foreign files, lying suffixes; and strict JSON everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipsan import strict_json
from clipsan.checkpoints import load_model, save_model
from clipsan.errors import UserError
from clipsan.models import create_model
from conftest import run_cli, strict_loads

TINY = "clipsan-tiny-rn"
NAN_TENSOR = "visual.layer2.0.conv1.weight"


def commands(model: Path, caption_data: Path, eval_data: Path, run_dir: Path) -> dict[str, list]:
    """Every command that reads a MODEL, at the smallest settings that still run it end to end."""
    train = ["--data", caption_data, "--max-steps", "1", "--batch-size", "8", "--run-dir", run_dir]
    return {
        "eval": ["eval", model, "--data", eval_data, "--templates", "photo"],
        "scan": ["scan", model, "--probes", "4", "--steps", "2", "--run-dir", run_dir],
        "purify": ["purify", model, "--method", "ft", *train],
        "poison": ["poison", model, "--trigger", "badnet", "--rate", "0.1", *train],
        "craft-adv": ["craft-adv", model, *train],
    }


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model(TINY)
    with torch.no_grad():
        model.clip.state_dict()[NAN_TENSOR][0, 0, 0, 0] = float("nan")
    return save_model(model, tmp_path_factory.mktemp("hostile") / "nan.safetensors")


@pytest.mark.parametrize("command", ["eval", "scan", "purify", "poison", "craft-adv"])
def test_non_finite_weights_are_bad_input_for_every_command(command, nan_model, caption_data, eval_data, tmp_path):
    proc = run_cli(*commands(nan_model, caption_data, eval_data, tmp_path / "run")[command], "--format", "json")
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"clipsan {command}:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{nan_model}: weight {NAN_TENSOR} holds 1 NaN/inf value(s)" in errors[0]
    assert proc.stdout == ""  # no report, so no NaN in one


def test_non_finite_weights_in_a_reference_or_a_shard_are_named(nan_model, tiny_model, tmp_path):
    from clipsan import api

    with pytest.raises(UserError, match=rf"nan\.safetensors: weight {NAN_TENSOR}"):
        api.scan(api.ScanConfig(models=(str(tiny_model),), reference=str(nan_model), run_dir=str(tmp_path / "run"), device="cpu", probes=4, steps=2))
    state = load_file(str(nan_model))
    state["visual.conv1.weight"][0, 0, 0, 0] = float("inf")  # open_clip names, another tensor: the first bad one is named
    save_file(state, str(tmp_path / "inf.safetensors"))
    with pytest.raises(UserError, match=r"inf\.safetensors: weight visual\.conv1\.weight holds 1 NaN/inf"):
        load_model(str(tmp_path / "inf.safetensors"))


def test_finite_weights_that_overflow_are_refused_by_scan(tmp_path):
    from clipsan import api

    torch.manual_seed(0)
    model = create_model(TINY)
    with torch.no_grad():
        model.clip.visual.conv1.weight.fill_(3e38)  # finite, but the first convolution's sums are not
    path = save_model(model, tmp_path / "huge.safetensors")
    with pytest.raises(UserError, match=r"huge\.safetensors: the image features of clean probes are not finite"):
        api.scan(api.ScanConfig(models=(str(path),), run_dir=str(tmp_path / "run"), device="cpu", probes=4, steps=2))


# --------------------------------------------------------------------------- what a file is


def test_format_comes_from_the_bytes_not_the_suffix(tiny_model, tmp_path):
    as_pt = tmp_path / "really-safetensors.pt"
    as_pt.write_bytes(tiny_model.read_bytes())
    assert load_model(str(as_pt)).arch_source == "metadata"  # read as safetensors: its metadata is there
    as_safetensors = tmp_path / "really-torch.safetensors"
    torch.save(load_file(str(tiny_model)), as_safetensors)
    assert load_model(str(as_safetensors)).layout == "torch"
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a checkpoint" * 20)
    with pytest.raises(UserError, match=r"garbage\.safetensors: not a weights file clipsan can read"):
        load_model(str(garbage))


def test_torchscript_is_refused_whatever_its_name(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UserError, match="refusing to load a TorchScript archive"):
        load_model(str(path))


def test_a_foreign_file_is_refused_without_an_architecture_search(tmp_path, monkeypatch):
    import clipsan.checkpoints.arch_inference

    def no_search(arch):
        raise AssertionError(f"built {arch}: the refusal should not try architectures")

    monkeypatch.setattr(clipsan.checkpoints.arch_inference, "_build_shape_table", no_search)
    monkeypatch.setattr(clipsan.checkpoints.arch_inference, "_shape_tables", {})
    save_file({"x": torch.randn(64, 64)}, str(tmp_path / "random.safetensors"))
    with pytest.raises(UserError, match=r"random\.safetensors: not a CLIP checkpoint: none of its 1 tensor names is a CLIP weight's \(first: 'x'\)"):
        load_model(str(tmp_path / "random.safetensors"))
    torch.save({"encoder.weight": torch.randn(4)}, tmp_path / "random.pt")
    with pytest.raises(UserError, match=r"random\.pt: not a CLIP checkpoint"):
        load_model(str(tmp_path / "random.pt"))
    save_file({"visual.something": torch.randn(4)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(UserError, match="they lack a text token embedding and an image tower stem"):
        load_model(str(tmp_path / "partial.safetensors"))


# --------------------------------------------------------------------------- strict JSON


@pytest.mark.parametrize("command", ["eval", "scan", "purify", "poison", "craft-adv"])
def test_every_json_output_parses_strictly(command, tiny_model, caption_data, eval_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*commands(tiny_model, caption_data, eval_data, run_dir)[command], "--format", "json", "--output", tmp_path / "report.json")
    assert proc.returncode in (0, 1), proc.stderr  # scan: 1 is a verdict
    report = strict_loads(proc.stdout)
    assert strict_loads((tmp_path / "report.json").read_text()) == report
    fields = report["models"][0] if command == "eval" else report
    assert {"layout", "arch", "arch_source", "activation", "activation_source"} <= fields.keys()
    for path in run_dir.rglob("*.json") if run_dir.exists() else ():
        strict_loads(path.read_text())
    for line in (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else ():
        strict_loads(line)
    if command == "scan":
        sarif = run_cli(*commands(tiny_model, caption_data, eval_data, tmp_path / "run2")[command], "--format", "sarif")
        assert strict_loads(sarif.stdout)["version"] == "2.1.0"


def test_the_strict_writer_names_a_non_finite_field():
    assert strict_json.dumps({"a": [1.0, None]}) == json.dumps({"a": [1.0, None]})
    with pytest.raises(ValueError, match=r"\$\.signals\[1\]\.statistic is not a finite number"):
        strict_json.dumps({"signals": [{"statistic": 0.5}, {"statistic": float("nan")}]})
    with pytest.raises(ValueError):
        strict_loads('{"x": NaN}')
