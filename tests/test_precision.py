"""The CUDA path on CPU: every command under bf16/fp16 autocast, the autocast boundary, scan in fp32,
device and precision resolution, and the multi-GPU setup (init arguments, SyncBatchNorm).

CPU autocast runs the same low-precision kernels choice the GPU makes (matmuls and convolutions
in bf16/fp16, the rest in fp32), so a loss that turns NaN under CUDA autocast turns NaN here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from clipsan import api
from clipsan.engine import runtime
from clipsan.errors import UserError
from conftest import run_in_process as _run

LOW = ("bf16", "fp16")
STEPS = ["--max-steps", "2", "--batch-size", "8", "--log-every", "1", "--workers", "0", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records, f"{run_dir}: nothing logged"
    return [value for record in records for key, value in record.items() if key.startswith("loss")]


def _assert_trained_in(run_dir: Path, precision: str, steps: int = 2) -> None:
    losses = _losses(run_dir)
    assert all(math.isfinite(v) for v in losses), losses
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == steps
    assert json.loads((run_dir / "config.json").read_text())["runtime"]["precision"] == precision


# --- every command under bf16 and fp16 ------------------------------------------------------


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("method", ["ft", "cleanclip", "cleanerclip", "abd", "par"])
def test_purify_runs_in_low_precision_with_finite_losses(capsys, tiny_model, caption_data, tmp_path, method, precision):
    extra = ["--craft-max-steps", "2", "--craft-batch-size", "8", "--reference", tiny_model] if method == "abd" else []
    run = tmp_path / "run"
    report = _run(capsys, "purify", tiny_model, "--method", method, "--data", caption_data, "--run-dir", run, "--precision", precision, *STEPS, *extra)
    assert report["steps"] == 2 and math.isfinite(report["final"]["loss"])
    _assert_trained_in(run, precision)
    if method == "abd":  # the craft stage (AdvCLIP's GAN and topology terms, L_bd) too
        _assert_trained_in(run / "craft", precision)


@pytest.mark.parametrize("precision", LOW)
def test_craft_adv_runs_in_low_precision_with_finite_losses(capsys, tiny_model, caption_data, tmp_path, precision):
    # The reproduction: "loss became nan at step 1" (the topology term under autocast).
    run = tmp_path / "run"
    report = _run(capsys, "craft-adv", tiny_model, "--data", caption_data, "--reference", tiny_model, "--run-dir", run, "--precision", precision, *STEPS)
    assert report["steps"] == 2 and {"loss_topo", "loss_bd", "loss_gan"} <= set(report["final"])
    _assert_trained_in(run, precision)


@pytest.mark.parametrize("precision", LOW)
def test_poison_with_badclip_runs_in_low_precision_with_finite_losses(capsys, tiny_model, caption_data, tmp_path, precision):
    run = tmp_path / "run"
    report = _run(capsys, "poison", tiny_model, "--data", caption_data, "--trigger", "badclip", "--rate", "0.05", "--patch-epochs", "1",
                  "--run-dir", run, "--precision", precision, *STEPS)  # fmt: skip
    assert math.isfinite(report["badclip"]["loss_before"]) and math.isfinite(report["badclip"]["loss_after"])
    _assert_trained_in(run, precision)


@pytest.mark.parametrize("precision", LOW)
def test_eval_in_low_precision_matches_fp32(capsys, tiny_model, eval_data, precision):
    def ca(p):
        report = _run(capsys, "eval", tiny_model, "--data", eval_data, "--templates", "photo", "--trigger", "badnet", "--device", "cpu", "--workers", "0",
                      "--precision", p)  # fmt: skip
        return report["models"][0]

    low, full = ca(precision), ca("fp32")
    assert all(0.0 <= v <= 1.0 for v in [*low["ca"].values(), *low["asr"].values()])
    # Top-5 on 93 images of a random-init model: rank ties may break differently, by an image or two.
    assert abs(low["ca"]["5"] - full["ca"]["5"]) <= 2 / low["n_images"]


def test_scan_statistics_are_fp32_whatever_the_precision(tiny_model, tmp_path):
    """bf16 features are not unit vectors: on this random-init model the clean probes' mean cosine
    exceeded 1 and the collapse score reached 1e8. Scan computes in fp32, so its numbers match."""
    from clipsan.checkpoints import save_model
    from clipsan.models import create_model

    torch.manual_seed(1)
    reference = tmp_path / "reference.safetensors"
    save_model(create_model("clipsan-tiny-rn"), reference)

    def scan(precision):
        config = api.ScanConfig(
            models=(str(tiny_model),), reference=str(reference), run_dir=str(tmp_path / precision), device="cpu", precision=precision, probes=32, steps=30
        )
        return api.scan(config).to_json()

    full, low = scan("fp32"), scan("bf16")
    assert low["precision"] == "fp32" and low["verdict"] == full["verdict"]
    for a, b in zip(full["signals"], low["signals"]):
        assert a["name"] == b["name"] and abs(a["statistic"] - b["statistic"]) <= 1e-4
    decree = low["signals"][0]
    assert decree["clean_cosine"] <= 1.0 + 1e-6 and abs(decree["collapse_score"]) < 10


# --- the autocast boundary ------------------------------------------------------------------


def test_towers_run_under_autocast_and_losses_in_fp32_outside_it(monkeypatch, tiny_model, caption_data, tmp_path):
    """Runtime.encode is the boundary: CLIP towers in bf16, fp32 features out; every cross-entropy
    and AdvCLIP's topology graphs outside autocast on fp32 inputs (inside autocast, a ``.float()``
    would not stop a matmul from running in bf16)."""
    from clipsan.models import ClipModel
    from clipsan.recipes.abd import advclip

    seen: dict[str, list] = {"tower": [], "features": [], "loss": [], "topology": []}

    def spy(name, func, inspect):
        def wrapped(*args, **kwargs):
            out = func(*args, **kwargs)
            seen[name].append(inspect(args, out))
            return out

        return wrapped

    for tower in ("encode_image", "encode_text"):
        monkeypatch.setattr(ClipModel, tower, spy("features", getattr(ClipModel, tower), lambda args, out: out.dtype))
    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy("tower", torch.nn.Conv2d.forward, lambda args, out: out.dtype))
    monkeypatch.setattr(
        torch.nn.functional,
        "cross_entropy",
        spy("loss", torch.nn.functional.cross_entropy, lambda args, out: (torch.is_autocast_enabled("cpu"), args[0].dtype)),
    )
    monkeypatch.setattr(
        advclip, "neighbour_distribution", spy("topology", advclip.neighbour_distribution, lambda args, out: (torch.is_autocast_enabled("cpu"), out.dtype))
    )

    data = api.CaptionData(str(caption_data))
    training = api.TrainConfig(epochs=1, batch_size=8, lr=1e-4, warmup_steps=0, max_steps=1, workers=0)
    api.purify(api.PurifyConfig(str(tiny_model), data, api.CleanCLIPConfig(), training=training, run_dir=str(tmp_path / "p"), device="cpu", precision="bf16"))
    api.craft_adv(api.CraftAdvConfig(str(tiny_model), data, api.CraftConfig(batch_size=8, max_steps=1), reference=str(tiny_model), run_dir=str(tmp_path / "c"),
                                     device="cpu", precision="bf16"))  # fmt: skip

    assert torch.bfloat16 in seen["tower"], "the towers' convolutions never ran under autocast"
    assert set(seen["features"]) == {torch.float32}
    assert seen["loss"] and set(seen["loss"]) == {(False, torch.float32)}
    assert seen["topology"] and set(seen["topology"]) == {(False, torch.float32)}


# --- devices and precisions -----------------------------------------------------------------


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine that claims two CUDA devices (nothing here launches a kernel)."""
    selected = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    saved = [backend.fp32_precision for backend in backends]
    yield selected
    for backend, value in zip(backends, saved):
        backend.fp32_precision = value


@pytest.mark.parametrize("spec", ["cudax", "cuda:abc", "cuda:", "gpu", "cuda:1:2"])
def test_malformed_devices_are_refused(spec):
    with pytest.raises(UserError, match="expected auto, cpu, cuda or cuda:N"):
        runtime.resolve_device(spec)


def test_a_cuda_device_is_checked_against_the_devices_present(two_gpus):
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda") == runtime.resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"cuda:99: this machine has 2 CUDA devices \(cuda:0 to cuda:1\)"):
        runtime.resolve_device("cuda:99")


def test_the_cuda_device_is_selected_and_fp32_may_use_tf32(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    rt = runtime.setup_runtime("cuda:1", "auto")
    assert rt.device == torch.device("cuda", 1) and two_gpus == [torch.device("cuda", 1)]
    assert torch.backends.cuda.matmul.fp32_precision == "tf32" and torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert rt.precision == "bf16"


def test_auto_precision_is_bf16_only_with_native_support(two_gpus, monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)  # emulated only (pre-Ampere)
    assert runtime.resolve_precision("auto", cuda) == "fp16"
    assert runtime.Runtime(cuda, "fp16").grad_scaler().is_enabled()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert runtime.resolve_precision("auto", cuda) == "bf16"
    assert not runtime.Runtime(cuda, "bf16").grad_scaler().is_enabled()
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.resolve_precision("fp16", cpu) == "fp16"


def test_cpu_runs_never_touch_the_cuda_settings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: pytest.fail("set_device on a CPU run"))
    before = torch.backends.cuda.matmul.fp32_precision
    rt = runtime.setup_runtime("cpu", "auto")
    assert (rt.device.type, rt.precision) == ("cpu", "fp32") and torch.backends.cuda.matmul.fp32_precision == before


def test_the_cli_refuses_devices_this_machine_lacks(tiny_model, eval_data):
    from conftest import run_cli

    proc = run_cli("eval", tiny_model, "--data", eval_data, "--device", "cuda:99")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cuda:99" in lines[0], proc.stderr


# --- several GPUs ---------------------------------------------------------------------------


def test_torchrun_on_cuda_joins_nccl_bound_to_the_local_gpu(two_gpus, monkeypatch):
    import torch.distributed as dist

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    rt = runtime.setup_runtime("auto", "auto")
    assert rt.device == torch.device("cuda", 1) and two_gpus == [torch.device("cuda", 1)]
    assert calls == [("nccl", {"device_id": torch.device("cuda", 1), "timeout": runtime.PROCESS_GROUP_TIMEOUT})]
    assert runtime.PROCESS_GROUP_TIMEOUT.total_seconds() >= 30 * 60  # longer than a ViT-L checkpoint write
    with pytest.raises(UserError, match="under torchrun each process uses cuda:LOCAL_RANK"):
        runtime.setup_runtime("cuda:0", "auto")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(UserError, match="torchrun started 3 processes on a machine with 2 CUDA devices"):
        runtime.setup_runtime("cuda", "auto")


def test_batchnorm_train_syncs_statistics_only_across_cuda_processes():
    from clipsan.models import create_model

    def converted(device, world_size, batchnorm):
        model = create_model("clipsan-tiny-rn")
        rt = runtime.Runtime(torch.device(device), "fp32", 0, world_size)
        return any(isinstance(m, torch.nn.SyncBatchNorm) for m in rt.sync_batchnorm(model, batchnorm).modules())

    assert converted("cuda", 2, "train")
    assert not converted("cuda", 2, "frozen")  # frozen layers use running statistics: nothing to sync
    assert not converted("cpu", 2, "train")  # gloo: SyncBatchNorm is CUDA-only, each shard keeps its own
    assert not converted("cuda", 1, "train")


# --- bf16 defenses end where fp32 ones do ---------------------------------------------------

# |CA@1(bf16) - CA@1(fp32)| after a defense, on the test world's 155 eval images: measured at most
# 1 image (0.0065) here and 0.0 to 0.0032 on the lab's 620 (BENCHMARKS.md, benchmarks/precision_ca.py),
# while a second fp32 seed moves CA by 0.03 to 0.08 here. 0.02 (3 images) leaves room for rounding
# yet fails a bf16 path that degrades training.
CA_TOLERANCE = 0.02
NO_CHECK = api.EvidenceConfig(verify_budget="off")


@pytest.fixture(scope="module")
def learnt(tmp_path_factory, one_thread) -> dict[str, Path]:
    """A tiny model trained (fp32) until its zero-shot CA is well above chance, and the world it learnt."""
    from clipsan.checkpoints import save_model
    from clipsan.data import world
    from clipsan.models import create_model

    root = tmp_path_factory.mktemp("learnt")
    world.write_caption_dataset(root / "train", 1000, seed=5)
    world.write_eval_set(root / "eval", 5, seed=1)
    torch.manual_seed(0)
    save_model(create_model("clipsan-tiny-rn"), root / "init.safetensors")
    training = api.TrainConfig(
        epochs=100, batch_size=64, lr=2e-3, warmup_steps=10, max_steps=80, batchnorm="train", save_every=10**6, log_every=10**6, workers=0
    )
    # No backdoor check (--verify-budget off): these runs compare precisions, and the 50 held-out images would make it run.
    config = api.PurifyConfig(str(root / "init.safetensors"), api.CaptionData(str(root / "train")), training=training, out=str(root / "start.safetensors"),
                              run_dir=str(root / "run"), device="cpu", precision="fp32", evidence=NO_CHECK)  # fmt: skip
    api.purify(config)
    return {"start": root / "start.safetensors", "train": root / "train", "eval": root / "eval", "root": root}


def _zero_shot_ca(path: Path, eval_root: Path) -> float:
    from clipsan.checkpoints import load_model
    from clipsan.data.labelled import open_labelled_dataset
    from clipsan.evaluation.zeroshot import zero_shot

    return zero_shot(load_model(str(path)).model, open_labelled_dataset(str(eval_root)), templates=["a photo of a {}."], ks=(1,))["ca"]["1"]


@pytest.mark.parametrize("method", ["ft", "cleanclip", "abd"])
def test_a_bf16_defense_ends_within_tolerance_of_the_fp32_ca(learnt, method):
    from safetensors.torch import load_file

    start_ca = _zero_shot_ca(learnt["start"], learnt["eval"])
    assert start_ca > 0.15, f"the start model must have learnt something (chance is 1/31), CA@1 {start_ca}"
    recipes = {
        "ft": api.FineTuneConfig(),
        "cleanclip": api.CleanCLIPConfig(),
        "abd": api.ABDConfig(craft=api.CraftConfig(batch_size=16, max_steps=5), reference=str(learnt["start"])),
    }
    outputs = {}
    for precision in ("fp32", "bf16"):
        out = learnt["root"] / f"{method}-{precision}.safetensors"
        training = api.TrainConfig(epochs=100, batch_size=32, lr=5e-4, warmup_steps=2, max_steps=10, save_every=10**6, log_every=10**6, workers=0)
        api.purify(api.PurifyConfig(str(learnt["start"]), api.CaptionData(str(learnt["train"])), recipes[method], training=training, out=str(out),
                                    run_dir=str(learnt["root"] / f"run-{method}-{precision}"), device="cpu", precision=precision,
                                    evidence=NO_CHECK))  # fmt: skip
        outputs[precision] = out
    full, low = load_file(str(outputs["fp32"])), load_file(str(outputs["bf16"]))
    assert any(not torch.equal(full[k], low[k]) for k in full), "the bf16 run computed exactly what fp32 did: autocast never ran"
    gap = abs(_zero_shot_ca(outputs["bf16"], learnt["eval"]) - _zero_shot_ca(outputs["fp32"], learnt["eval"]))
    assert gap <= CA_TOLERANCE, f"{method}: bf16 CA@1 is {gap:.4f} from fp32's"
