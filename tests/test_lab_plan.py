"""The lab's plan: every stage's flags are real flags of the command that runs them, and mean what the lab wants."""

from __future__ import annotations

from dataclasses import replace

import pytest

from clipsan.errors import UserError
from clipsan.lab.plan import make_plan, method_of


@pytest.mark.parametrize("quick", [True, False])
def test_every_planned_command_line_parses(quick, config_of, tmp_path):
    plan = make_plan(quick)
    clean = config_of(["purify", "init.safetensors", "--method", "ft", "--data", str(tmp_path), *plan.clean_args])
    assert clean.training.batchnorm == "train" and clean.training.betas[1] == 0.98  # from scratch: CLIP's pre-training betas
    for attack, args in plan.attacks.items():
        assert config_of(["poison", "clean.safetensors", "--data", str(tmp_path), *args]).attack.trigger
        for defense, dargs in plan.defenses_for(attack).items():
            config = config_of(["purify", "v.safetensors", "--method", method_of(defense), "--data", str(tmp_path), *dargs])
            assert config.recipe.method == method_of(defense)
    assert config_of(["scan", "m.safetensors", *plan.scan_args]).budget == "quick"


def test_full_budget_adds_the_abd_ablations_on_badnet_and_badclip_and_i_adv_and_fast_ft_everywhere_and_fast_align_on_sig():
    full, quick = make_plan(False), make_plan(True)
    structured = {"badnet-stripes", "blended-triangles", "blended-text"}  # PAR's
    assert set(full.attacks) == {"badnet", "blended", "badclip", "sig", "wanet", "label-consistent"} | structured
    assert set(quick.attacks) == {"badnet", "blended", "badclip"}
    for attack in full.attacks:
        extra = set(full.defenses_for(attack)) - {"ft", "cleanclip", "cleanerclip", "abd", "par", "abd_align"}
        ablations = {"abd_T_eda_only", "abd_UAP_no_Lbd"} if attack in ("badnet", "badclip") else set()
        sig_only = {"abd_align_lr2e-3"} if attack == "sig" else set()
        assert extra == ablations | sig_only | {"abd_I_adv_only", "ft_lr1e-3", "ft_lr2e-3"}
        for row in ("ft_lr1e-3", "ft_lr2e-3"):
            assert method_of(row) == "ft" and full.defenses_for(attack)[row][full.defenses["ft"].index("--lr") + 1] == row[-4:]
    # --quick: one row per recipe (ABD's align reading is the full budget's)
    assert all(set(quick.defenses_for(a)) == {"ft", "cleanclip", "cleanerclip", "abd", "par"} for a in quick.attacks)
    assert set(full.defenses) == {"ft", "cleanclip", "cleanerclip", "abd", "par", "abd_align"}


def test_attacks_restricts_the_plan_to_the_named_attacks_of_the_budget():
    quick, full = make_plan(True), make_plan(False)
    picked = make_plan(True, attacks="badclip, badnet")
    assert list(picked.attacks) == ["badnet", "badclip"]  # the budget's order, whatever the order asked
    assert picked.attacks == {a: quick.attacks[a] for a in ("badnet", "badclip")} and picked.defenses == quick.defenses
    assert make_plan(True, attacks=None).describe() == quick.describe()  # default: every attack of the budget
    assert make_plan(False, attacks=["sig", "badclip", "sig"]).extra_rows == {a: full.extra_rows[a] for a in ("badclip", "sig")}
    wanet = make_plan(False, attacks="wanet").defenses_for("wanet")
    assert set(wanet) == set(full.defenses) | {"abd_I_adv_only", "ft_lr1e-3", "ft_lr2e-3"}  # no ablation rows for it


def test_the_command_line_hands_attacks_to_the_plan(monkeypatch, tmp_path):
    import clipsan.lab.runner
    from clipsan.cli import main

    seen = []
    monkeypatch.setattr(clipsan.lab.runner, "run_lab", lambda opts, notes: seen.append(opts) or {"rows": [], "scan": [], "timings": {}})
    assert main(["lab", "--quick", "--attacks", "blended", "--out", str(tmp_path / "lab"), "--format", "json"]) == 0
    (opts,) = seen
    assert list(make_plan(opts.quick, attacks=opts.attacks).attacks) == ["blended"]


@pytest.mark.parametrize(
    "quick, names, message",
    [
        (True, "badnet,nope", r"^--attacks: unknown attack 'nope'; the quick budget's attacks are badnet, blended, badclip$"),
        (True, "sig", r"^--attacks: 'sig' is not in the quick budget; the quick budget's attacks are badnet, blended, badclip$"),
        (False, " , ", r"^--attacks: expected one or more attack names; the full budget's attacks are badnet, .*, blended-text$"),
    ],
)
def test_attacks_outside_the_budget_are_refused(quick, names, message):
    with pytest.raises(UserError, match=message):
        make_plan(quick, attacks=names)


def test_the_attacks_help_names_every_attack():
    from clipsan.cli import click_command
    from clipsan.lab.victims import LAB_ATTACKS_FULL

    (param,) = [p for p in click_command().commands["lab"].params if p.name == "attacks"]
    assert all(name in param.help for name in LAB_ATTACKS_FULL)


@pytest.mark.parametrize("quick", [True, False])
def test_every_defense_gets_the_same_fine_tuning_budget(quick, config_of, tmp_path):
    plan = make_plan(quick)
    budgets = set()
    for attack in plan.attacks:
        for defense, dargs in plan.defenses_for(attack).items():
            t = config_of(["purify", "v.safetensors", "--method", method_of(defense), "--data", str(tmp_path), *dargs]).training
            named_lr = float(defense.split("_lr")[1]) if "_lr" in defense else 5e-4  # a row's name says its lr
            assert t.lr == named_lr
            budgets.add((t.epochs, t.batch_size, t.warmup_steps))
    assert len(budgets) == 1, budgets


def test_the_abd_rows_differ_from_the_lab_abd_only_where_their_name_says(config_of, tmp_path):
    plan = make_plan(False)

    def recipe(defense: str):
        return config_of(["purify", "v.safetensors", "--method", "abd", "--data", tmp_path, *plan.defenses_for("badnet")[defense]]).recipe

    abd = recipe("abd")
    assert (abd.objective, abd.adv_prob, abd.eda, abd.craft.bd_weight) == ("clip", 0.5, True, 500.0)  # the lab's half-patched clip reading
    align = recipe("abd_align")
    assert (align.objective, align.adv_prob, align.craft) == ("align", 1.0, abd.craft)  # every view patched, the same craft
    assert recipe("abd_I_adv_only") == replace(abd, eda=False)
    assert recipe("abd_T_eda_only") == replace(abd, adv_prob=0.0)
    assert recipe("abd_UAP_no_Lbd") == replace(abd, craft=replace(abd.craft, bd_weight=0.0))


def test_sig_gets_the_sweeps_align_setting_at_4x_the_lr(config_of, tmp_path):
    rows = make_plan(False).defenses_for("sig")

    def config(defense: str):
        return config_of(["purify", "v.safetensors", "--method", "abd", "--data", tmp_path, *rows[defense]])

    fast, align = config("abd_align_lr2e-3"), config("abd_align")
    assert fast.recipe == align.recipe and fast.training.lr == 4 * align.training.lr == 2e-3
