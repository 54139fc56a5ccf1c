"""Configs check themselves: a caller of ``clipsan.api`` and the command line are refused the same
bad values with the same one line (the command line adds only ``clipsan COMMAND: ``), exit 2.

Every field of every config that declares a check is exercised: the bad value is derived from the
check itself, so a new checked field is covered (or must be listed as API-only) the day it is added.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clipsan import api
from clipsan import config as configs
from clipsan.cli import main
from clipsan.config.checks import Check
from clipsan.config.lab import LabConfig
from clipsan.errors import UserError

DATA = Path(__file__).resolve().parent  # an existing folder: configs check --data exists, not what it holds
MODEL = "suspect.safetensors"  # never read: every case is refused before any work


def _purify(method: str = "ft") -> list[str]:
    return ["purify", MODEL, "--method", method, "--data", str(DATA)]


def _poison(trigger: str = "badnet") -> list[str]:
    return ["poison", MODEL, "--data", str(DATA), "--trigger", trigger]


# Which command sets each config's fields, and a valid config of that class to vary one field of.
WHERE = {
    configs.CaptionData: (_purify(), lambda **kw: configs.CaptionData(**{"path": str(DATA), **kw})),
    configs.TrainConfig: (_purify(), configs.TrainConfig),
    configs.CleanCLIPConfig: (_purify("cleanclip"), configs.CleanCLIPConfig),
    configs.CleanerCLIPConfig: (_purify("cleanerclip"), configs.CleanerCLIPConfig),
    configs.CraftConfig: (_purify("abd"), configs.CraftConfig),
    configs.ABDConfig: (_purify("abd"), configs.ABDConfig),
    configs.PARConfig: (_purify("par"), configs.PARConfig),
    configs.BadClipConfig: (_poison("badclip"), configs.BadClipConfig),
    configs.AttackConfig: (_poison(), lambda **kw: configs.AttackConfig(**{"trigger": "badnet", **kw})),
    configs.EvidenceConfig: (_purify(), configs.EvidenceConfig),
    configs.PurifyConfig: (_purify(), lambda **kw: configs.PurifyConfig(MODEL, configs.CaptionData(str(DATA)), **kw)),
    configs.PoisonConfig: (_poison(), lambda **kw: configs.PoisonConfig(MODEL, configs.CaptionData(str(DATA)), configs.AttackConfig("badnet"), **kw)),
    configs.CraftAdvConfig: (["craft-adv", MODEL, "--data", str(DATA)], lambda **kw: configs.CraftAdvConfig(MODEL, configs.CaptionData(str(DATA)), **kw)),
    configs.EvalConfig: (["eval", MODEL, "--data", str(DATA)], lambda **kw: configs.EvalConfig(**{"models": (MODEL,), "data": str(DATA), **kw})),
    configs.ScanConfig: (["scan", MODEL], lambda **kw: configs.ScanConfig(**{"models": (MODEL,), **kw})),
    configs.CalibrateConfig: (
        ["calibrate", MODEL, "--out", "calibration.json"],
        lambda **kw: configs.CalibrateConfig(**{"models": (MODEL,), "out": "calibration.json", **kw}),
    ),
    LabConfig: (["lab"], lambda **kw: LabConfig(Path("lab-out"), **kw)),
}
# Fields no option sets, and why.
API_ONLY = {
    (configs.TrainConfig, "schedule"): "crafting's constant rate, set by the code",
    **{(configs.TrainConfig, name): "a recipe's paper schedule sets it (PAR's)" for name in ("warmup_fraction", "warmup_start_lr", "final_lr")},
    **{(configs.PARConfig, name): "PAR's augmentation, as its code has it" for name in ("noise_prob", "noise_std", "erase_prob", "erase_scale")},
    (configs.BadClipConfig, "guide_captions"): "not a command-line option",
    (configs.CraftConfig, "lr"): "purify's --lr is the fine-tune's; craft-adv's --lr is covered below",
}
# Tuple fields set through options of another shape.
OPTION_VALUES = {"betas": ("--beta1", "1", (1.0, 0.999)), "ks": ("--topk", "0,1", (0, 1))}


def _bad_value(check: Check, field: dataclasses.Field):
    """A value the check refuses, and how it is typed on the command line."""
    if check.choices:
        return "nope", "nope"
    if check.pattern is not None:
        return ("gpu", "gpu") if check.flag == "--device" else (" ", " ")
    if check.path is not None:
        missing = str(DATA / "no-such-thing")
        return missing, missing
    bad = check.low if check.low_open else (check.low - 1 if check.low is not None else check.high + 1)
    if "int" in str(field.type) and "float" not in str(field.type):
        bad = int(bad)
    return bad, str(bad)


def _cases():
    for config_type, (argv, make) in WHERE.items():
        for field in dataclasses.fields(config_type):
            check = field.metadata.get("check")
            if check is None or (config_type, field.name) in API_ONLY:
                continue
            flag, typed, bad = OPTION_VALUES.get(field.name, (check.flag, None, None))
            if bad is None:
                bad, typed = _bad_value(check, field)
            yield pytest.param(make, {field.name: bad}, [*argv, flag, typed], id=f"{config_type.__name__}.{field.name}")
    # Refusals across fields, and a flag spelled per command.
    yield pytest.param(
        lambda **kw: configs.PurifyConfig(MODEL, configs.CaptionData(str(DATA)), **kw), {"resume": True}, [*_purify(), "--resume"], id="resume-needs-run-dir"
    )
    yield pytest.param(
        lambda **kw: configs.AttackConfig("badnet", **kw),
        {"label_consistent": True, "natural_captions": True},
        [*_poison(), "--label-consistent", "--natural-captions"],
        id="label-consistent-natural",
    )
    yield pytest.param(configs.CraftConfig, {"lr": -1.0}, ["craft-adv", MODEL, "--data", str(DATA), "--lr", "-1"], id="craft-adv.lr")
    # The backdoor check: what needs it is refused without it; --verify-every belongs to --until-clean.
    evidence = configs.EvidenceConfig
    yield pytest.param(evidence, {"until_clean": True, "verify_budget": "off"}, [*_purify(), "--until-clean", "--verify-budget", "off"], id="until-clean-off")
    yield pytest.param(evidence, {"scan_report": str(DATA / "conftest.py"), "verify_budget": "off"},
                       [*_purify(), "--scan-report", str(DATA / "conftest.py"), "--verify-budget", "off"], id="scan-report-off")  # fmt: skip
    yield pytest.param(evidence, {"verify_every": 5}, [*_purify(), "--verify-every", "5"], id="verify-every-needs-until-clean")
    yield pytest.param(evidence, {"require_clean": True, "holdout": 0}, [*_purify(), "--require-clean", "--holdout", "0"], id="require-clean-holdout-0")


@pytest.fixture
def nothing_runs(monkeypatch):
    """A config that passes its checks would start real work: make that a test failure instead."""
    import clipsan.lab.runner

    def accepted(config, notes=None):
        raise AssertionError(f"accepted {config!r}")

    for name in ("purify", "poison", "craft_adv", "evaluate", "scan", "calibrate"):
        monkeypatch.setattr(api, name, accepted)
    monkeypatch.setattr(clipsan.lab.runner, "run_lab", accepted)


@pytest.mark.parametrize("make, values, argv", list(_cases()))
def test_the_api_and_the_command_line_refuse_a_bad_value_alike(make, values, argv, nothing_runs, capsys):
    with pytest.raises(UserError) as refused:
        make(**values)
    message = str(refused.value)
    assert "\n" not in message and message
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"clipsan {argv[0]}: {message}"


def test_craft_adv_names_its_own_flags(nothing_runs, capsys):
    """craft-adv spells the crafting run's length --epochs (purify: --craft-epochs)."""
    with pytest.raises(UserError, match=r"^--craft-epochs 0: expected a count >= 1$"):
        configs.ABDConfig(craft=configs.CraftConfig(epochs=0))
    assert main(["craft-adv", MODEL, "--data", str(DATA), "--epochs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "clipsan craft-adv: --epochs 0: expected a count >= 1"


def test_an_unknown_method_is_refused_with_the_choices(nothing_runs, capsys):
    assert main(_purify("nope")) == 2
    assert capsys.readouterr().err.strip() == "clipsan purify: --method nope: expected one of ft, cleanclip, cleanerclip, abd, par"


def test_every_config_with_checks_is_exercised():
    """A config class added to clipsan.config with checked fields must get a row in WHERE."""
    import importlib
    import inspect
    import pkgutil

    import clipsan.config

    found = set()
    for module in pkgutil.iter_modules(clipsan.config.__path__):
        for _, cls in inspect.getmembers(importlib.import_module(f"clipsan.config.{module.name}"), inspect.isclass):
            if dataclasses.is_dataclass(cls) and any("check" in f.metadata for f in dataclasses.fields(cls)):
                found.add(cls)
    bases = {cls for cls in found if any(other is not cls and issubclass(other, cls) for other in WHERE)}
    assert found - bases <= set(WHERE), sorted(c.__name__ for c in found - bases - set(WHERE))


def test_a_holdout_the_data_has_no_room_for_is_refused_alike(tiny_model, caption_data, tmp_path, capsys):
    """--holdout is checked against the usable pairs once --data is read: the same one line from the API and the command line."""
    with pytest.raises(UserError) as refused:
        config = configs.PurifyConfig(
            str(tiny_model), configs.CaptionData(str(caption_data)), evidence=configs.EvidenceConfig(holdout=33), run_dir=str(tmp_path / "a")
        )
        api.purify(config)
    assert str(refused.value) == "--holdout 33: expected a count <= 32 (half of the 64 usable pairs of --data; the rest is trained on)"
    assert main(["purify", str(tiny_model), "--method", "ft", "--data", str(caption_data), "--holdout", "33", "--run-dir", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"clipsan purify: {refused.value}"
