"""The lab's plan: every stage's flags are real flags of the command that runs them, and mean what the lab wants."""

from __future__ import annotations

import pytest

from clipsan import api
from clipsan.cli import main
from clipsan.lab.plan import make_plan, method_of


class Parsed(Exception):
    """Raised by the stand-in API call: carries the config the command line built."""

    def __init__(self, config):
        self.config = config


def config_of(monkeypatch, argv: list[str]):
    """The API config ``clipsan ARGV`` builds (the command stops before any work)."""

    def capture(config, notes=None):
        raise Parsed(config)

    for name in ("purify", "poison", "scan"):
        monkeypatch.setattr(api, name, capture)
    with pytest.raises(Parsed) as parsed:
        main(argv)
    return parsed.value.config


@pytest.mark.parametrize("quick", [True, False])
def test_every_planned_command_line_parses(quick, monkeypatch, tmp_path):
    plan = make_plan(quick)
    clean = config_of(monkeypatch, ["purify", "init.safetensors", "--method", "ft", "--data", str(tmp_path), *plan.clean_args])
    assert clean.training.batchnorm == "train" and clean.training.betas[1] == 0.98  # from scratch: CLIP's pre-training betas
    for attack, args in plan.attacks.items():
        assert config_of(monkeypatch, ["poison", "clean.safetensors", "--data", str(tmp_path), *args]).attack.trigger
        for defense, dargs in plan.defenses_for(attack).items():
            config = config_of(monkeypatch, ["purify", "v.safetensors", "--method", method_of(defense), "--data", str(tmp_path), *dargs])
            assert config.recipe.method == method_of(defense)
    assert config_of(monkeypatch, ["scan", "m.safetensors", *plan.scan_args]).budget == "quick"


def test_full_budget_adds_the_abd_ablations_on_badnet_and_badclip_only():
    full, quick = make_plan(False), make_plan(True)
    assert set(full.attacks) >= {"badnet", "blended", "badclip", "sig", "wanet", "label-consistent"}
    assert set(quick.attacks) == {"badnet", "blended", "badclip"}
    for attack in full.attacks:
        extra = set(full.defenses_for(attack)) - {"ft", "cleanclip", "cleanerclip", "abd", "abd_align"}
        assert extra == ({"abd_I_adv_only", "abd_T_eda_only", "abd_UAP_no_Lbd"} if attack in ("badnet", "badclip") else set())
    assert all(set(quick.defenses_for(a)) == {"ft", "cleanclip", "cleanerclip", "abd", "abd_align"} for a in quick.attacks)


@pytest.mark.parametrize("quick", [True, False])
def test_every_defense_gets_the_same_fine_tuning_budget(quick, monkeypatch, tmp_path):
    plan = make_plan(quick)
    budgets = set()
    for attack in plan.attacks:
        for defense, dargs in plan.defenses_for(attack).items():
            t = config_of(monkeypatch, ["purify", "v.safetensors", "--method", method_of(defense), "--data", str(tmp_path), *dargs]).training
            budgets.add((t.epochs, t.batch_size, t.lr, t.warmup_steps))
    assert len(budgets) == 1, budgets
