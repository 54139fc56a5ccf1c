"""The lab's plan: every stage's flags are real flags of the command that runs them."""

from __future__ import annotations

import pytest

from clipsan.cli import build_parser
from clipsan.lab_plan import make_plan, method_of


@pytest.mark.parametrize("quick", [True, False])
def test_every_planned_command_line_parses(quick):
    parser = build_parser()
    plan = make_plan(quick)
    clean = parser.parse_args(["purify", "init.safetensors", "--method", "ft", "--data", "d", *plan.clean_args])
    assert clean.batchnorm == "train" and clean.beta2 == 0.98  # from scratch: CLIP's pre-training betas
    for attack, args in plan.attacks.items():
        parsed = parser.parse_args(["poison", "clean.safetensors", "--data", "d", *args])
        assert parsed.trigger
        for defense, dargs in plan.defenses_for(attack).items():
            parsed = parser.parse_args(["purify", "v.safetensors", "--method", method_of(defense), "--data", "d", *dargs])
            assert parsed.method == method_of(defense)
    parser.parse_args(["scan", "m.safetensors", *plan.scan_args])


def test_full_budget_adds_the_abd_ablations_on_badnet_and_badclip_only():
    full, quick = make_plan(False), make_plan(True)
    assert set(full.attacks) >= {"badnet", "blended", "badclip", "sig", "wanet", "label-consistent"}
    assert set(quick.attacks) == {"badnet", "blended", "badclip"}
    for attack in full.attacks:
        extra = set(full.defenses_for(attack)) - {"ft", "cleanclip", "cleanerclip", "abd"}
        assert extra == ({"abd_I_adv_only", "abd_T_eda_only", "abd_UAP_no_Lbd"} if attack in ("badnet", "badclip") else set())
    assert all(set(quick.defenses_for(a)) == {"ft", "cleanclip", "cleanerclip", "abd"} for a in quick.attacks)


@pytest.mark.parametrize("quick", [True, False])
def test_every_defense_gets_the_same_fine_tuning_budget(quick):
    parser = build_parser()
    plan = make_plan(quick)
    budgets = set()
    for attack in plan.attacks:
        for defense, dargs in plan.defenses_for(attack).items():
            parsed = parser.parse_args(["purify", "v.safetensors", "--method", method_of(defense), "--data", "d", *dargs])
            budgets.add((parsed.epochs, parsed.batch_size, parsed.lr, parsed.warmup))
    assert len(budgets) == 1, budgets
