"""clipsan as a library: a purify and an eval driven through ``clipsan.api`` alone, no command line."""

from __future__ import annotations

import json

import pytest

from clipsan import api
from clipsan.errors import UserError


def test_purify_then_evaluate_through_the_api(tiny_model, caption_data, eval_data, tmp_path):
    notes: list[str] = []
    training = api.CleanCLIPConfig.paper_schedule.train_config(epochs=1, batch_size=16, lr=1e-4, warmup_steps=1, max_steps=2)
    report = api.purify(
        api.PurifyConfig(
            str(tiny_model),
            api.CaptionData(str(caption_data)),
            recipe=api.CleanCLIPConfig(inmodal_weight=2.0),
            training=training,
            out=str(tmp_path / "p.safetensors"),
            run_dir=str(tmp_path / "run"),
            device="cpu",
        ),
        notes=notes.append,
    )
    assert isinstance(report, api.PurifyReport) and isinstance(report, api.TrainingReport) and report.method == "cleanclip" and report.steps == 2
    assert report.output == str(tmp_path / "p.safetensors") and (tmp_path / "p.safetensors").is_file()
    assert any("arch clipsan-tiny-rn" in n for n in notes)  # what the command line prints on stderr
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["recipe"]["inmodal_weight"] == 2.0 and recorded["training"]["epochs"] == 1
    assert json.loads(json.dumps(report.to_json()))["final"]["step"] == 2  # the --format json document

    evaluated = api.evaluate(
        api.EvalConfig(models=(str(tiny_model), report.output), data=str(eval_data), ks=(1, 5), trigger="badnet", templates="simple", workers=0, device="cpu")
    )
    assert [row["model"] for row in evaluated.models] == [str(tiny_model), report.output]
    for row in evaluated.models:
        assert 0 <= row["ca"]["1"] <= row["ca"]["5"] <= 1 and row["asr"] is not None


def test_api_errors_are_user_errors_not_exits(tmp_path, caption_data):
    with pytest.raises(UserError, match="no such file"):
        api.purify(api.PurifyConfig(str(tmp_path / "missing.safetensors"), api.CaptionData(str(caption_data)), device="cpu"))
    with pytest.raises(UserError, match="--t-pos"):
        api.CleanerCLIPConfig(t_pos=0)
