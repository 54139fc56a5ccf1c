"""What the lab runs: the world's size and every stage's command-line settings, per budget.

Settings were calibrated on the 2-core CPU machines the budgets are for
(numbers in BENCHMARKS.md); each is a plain clipsan flag list, so any row of the
lab can be re-run by hand from its log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from clipsan.config.attacks import BADCLIP
from clipsan.config.lab import CLEAN_TRAINING
from clipsan.config.recipes import RECIPE_CONFIGS
from clipsan.errors import UserError

# Each family's tiny arch (clipsan/models/model_configs/): the SigLIP one has CLIP's ResNet tower with
# SigLIP's text tower, loss and bias, because the tiny ViTs did not learn the world in the budget (docs/siglip.md).
LAB_ARCHS = {"clip": "clipsan-tiny-rn", "siglip": "clipsan-tiny-siglip-rn"}
# Prompts for zero-shot evaluation on the world (written next to the eval set).
LAB_TEMPLATES = ("a photo of a {}.", "a {}.", "an illustration of a {}.", "a drawing of a {}.")


@dataclass
class LabPlan:
    family: str  # config.lab.LAB_FAMILIES
    arch: str  # the clean model's architecture
    train_pairs: int
    defense_pairs: int
    clean_args: list[str]
    attacks: dict[str, list[str]]  # attack name -> `clipsan poison` flags
    defenses: dict[str, list[str]]  # method -> `clipsan purify` flags
    scan_args: list[str] | None = None  # `clipsan scan` flags; None: no scan stage
    # attack -> extra defense rows (ABD's ablations, other settings of a recipe); a row's label starts
    # with its method's name (``method_of``)
    extra_rows: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def defenses_for(self, attack: str) -> dict[str, list[str]]:
        return {**self.defenses, **self.extra_rows.get(attack, {})}

    def describe(self) -> dict:
        return {
            "train_pairs": self.train_pairs,
            "defense_pairs": self.defense_pairs,
            "clean": self.clean_args,
            "attacks": self.attacks,
            "defenses": self.defenses,
            "scan": self.scan_args,
            "extra_rows": self.extra_rows,
        }


def method_of(defense: str) -> str:
    """The purify --method behind a lab row label: the method itself, or METHOD_variant (abd_align, ft_lr1e-3)."""
    return next(m for m in RECIPE_CONFIGS if defense == m or defense.startswith(m + "_"))


def _clean_args(settings: dict) -> list[str]:
    return [
        "--epochs",
        str(settings["epochs"]),
        "--batch-size",
        str(settings["batch_size"]),
        "--lr",
        str(settings["lr"]),
        "--warmup",
        str(settings["warmup"]),
        "--weight-decay",
        str(settings["weight_decay"]),
        "--batchnorm",
        "train",
        "--beta2",
        str(settings["beta2"]),
        "--eps",
        str(settings["eps"]),
        "--save-every",
        "100000",
        "--log-every",
        "50",
        # The clean model is pretraining from random init on the whole train set its budget was
        # calibrated on, not a purification: no held-out utility check.
        "--holdout",
        "0",
    ]


def _poison_args(attack, quick: bool) -> list[str]:
    epochs = attack.quick_epochs if quick else attack.epochs
    args = [
        "--trigger",
        attack.trigger,
        "--rate",
        str(attack.rate),
        "--epochs",
        str(epochs),
        "--lr",
        str(attack.lr),
        "--batch-size",
        str(attack.batch_size),
        "--warmup",
        str(attack.warmup),
        "--save-every",
        "100000",
        "--log-every",
        "25",
    ]
    if attack.trigger_size:
        args += ["--trigger-size", str(attack.trigger_size)]
    if attack.label_consistent:
        args.append("--label-consistent")
    elif attack.natural_captions:
        args.append("--natural-captions")
    if attack.trigger == BADCLIP:
        b = attack.badclip
        args += ["--patch-epochs", str(b.epochs), "--patch-lr", str(b.lr), "--patch-images", str(b.images)]
    return args


# The defenses' fine-tuning budget: 2 epochs of the 5000 held-out pairs at batch 64 (156 steps), lr
# 5e-4 after 10 warmup steps. scripts/sweep_defenses.py tried others on the full lab's victims
# (BENCHMARKS.md): at lr 2e-4 CleanCLIP and CleanerCLIP cost as much clean accuracy as at 5e-4 (their
# toll comes from the in-modal views, not the step size) and kept far more of every backdoor, and ABD
# with every image patched lost 19-24 points of CA@1; so every row keeps this budget. At 1e-4 the 156
# steps left even ft/cleanclip at >= 91% ASR@1 on the quick badnet victim.
_DEFENSE_TRAINING = ["--epochs", "2", "--batch-size", "64", "--lr", "5e-4", "--warmup", "10", "--save-every", "100000", "--log-every", "25"]
# ABD crafts 100 steps of batch 16 first (~15-25 s on one thread), then fine-tunes on that budget.
_ABD_ARGS = _DEFENSE_TRAINING + ["--craft-epochs", "1", "--craft-batch-size", "16", "--craft-max-steps", "100"]
# ABD's `clip` fine-tune patches half the images in the lab, not every one (the paper's setting and
# purify's default): in this short high-lr budget, patching every image cost 5-11 points of CA@1 more
# than half for the same or a higher ASR@1 (BENCHMARKS.md). The `align` reading keeps the original
# images in its CLIP term, so it patches every adversarial view, as the paper does.
_ABD_CLIP_ARGS = _ABD_ARGS + ["--adv-prob", "0.5"]


def _with_lr(args: list[str], lr: str) -> list[str]:
    out = list(args)
    out[out.index("--lr") + 1] = lr
    return out


def select_attacks(quick: bool, names: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """The budget's attacks that ``names`` (comma-separated, or a list; None: all of them) picks, in the budget's order.

    A name that is not one of the budget's attacks is refused (UserError, exit 2) before anything runs.
    """
    from clipsan.lab.victims import LAB_ATTACKS, LAB_ATTACKS_FULL, LAB_ATTACKS_QUICK

    budget = LAB_ATTACKS_QUICK if quick else LAB_ATTACKS_FULL
    if names is None:
        return budget
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    wanted = [n for n in wanted if n]
    label = "quick" if quick else "full"
    valid = f"the {label} budget's attacks are {', '.join(budget)}"
    if not wanted:
        raise UserError(f"--attacks: expected one or more attack names; {valid}")
    for name in wanted:
        if name not in budget:
            what = f"{name!r} is not in the {label} budget" if name in LAB_ATTACKS else f"unknown attack {name!r}"
            raise UserError(f"--attacks: {what}; {valid}")
    return tuple(a for a in budget if a in wanted)


def make_plan(
    quick: bool, train_pairs: int | None = None, max_steps: int | None = None, attacks: str | Iterable[str] | None = None, family: str = "clip"
) -> LabPlan:
    """The lab's stages for a budget and a model family; ``attacks`` restricts it to some of the budget's attacks (see ``select_attacks``).

    The families share every stage but the clean model (its arch and training recipe).
    """
    from clipsan.lab.victims import LAB_ATTACKS

    attacks = select_attacks(quick, attacks)
    clean = dict(CLEAN_TRAINING[family]["quick" if quick else "full"])
    pairs = train_pairs or clean["n_pairs"]
    defense_pairs = max(256, pairs // 4)
    abd_args = _ABD_CLIP_ARGS
    abd_align_args = _ABD_ARGS + ["--abd-objective", "align"]
    # ABD's Table II (T_eda only) and Table III (UAP without L_bd) on badnet and badclip, full budget only.
    ablation_rows = {
        "abd_T_eda_only": abd_args + ["--adv-prob", "0"],
        "abd_UAP_no_Lbd": abd_args + ["--bd-weight", "0"],
    }
    # Rows the full lab runs on every attack, all cheap. Table II's I_adv only (patches without EDA
    # captions): in the 3-seed sweep it met the target on badnet, blended, badclip and wanet (BENCHMARKS.md).
    # ft at twice the lr: in the sweep (BENCHMARKS.md, first one seed, then the 3-seed lab) it removed blended
    # (3.5% ASR@1 at 0.5 points of CA@1), which every other row left at >= 16%.
    # ft at 4x the lr: the 3-seed sweep's setting for label-consistent (2.3% ASR@1 at 0.4 points).
    every_attack = {
        "abd_I_adv_only": abd_args + ["--no-eda"],
        "ft_lr1e-3": _with_lr(_DEFENSE_TRAINING, "1e-3"),
        "ft_lr2e-3": _with_lr(_DEFENSE_TRAINING, "2e-3"),
    }
    # Rows on some attacks only. The 3-seed sweep's setting for sig, the one attack no every-attack row
    # removed (2.6% ASR@1 at 0.3 points), costs ~70 s a run in the full lab (an ABD craft and an align
    # fine-tune), so it runs on sig alone.
    per_attack = {
        "badnet": ablation_rows,
        "badclip": ablation_rows,
        "sig": {"abd_align_lr2e-3": _with_lr(abd_align_args, "2e-3")},
    }
    scan = ["--budget", "quick"] + (["--steps", str(max_steps), "--probes", "32"] if max_steps else [])
    return LabPlan(
        family=family,
        arch=LAB_ARCHS[family],
        train_pairs=pairs,
        defense_pairs=defense_pairs,
        clean_args=_clean_args(clean),
        attacks={name: _poison_args(LAB_ATTACKS[name], quick) for name in attacks},
        defenses={
            "ft": _DEFENSE_TRAINING,
            "cleanclip": _DEFENSE_TRAINING,
            # K/N = 1/10 of the defense set (the paper: 1000-3000 of 250K-500K pairs, on far longer captions)
            "cleanerclip": _DEFENSE_TRAINING + ["--subcaptions-per-epoch", str(defense_pairs // 10)],
            "abd": abd_args,
            # PAR on the lab's budget (its own betas, weight decay and warmup start; --warmup replaces its half-run warmup)
            "par": _DEFENSE_TRAINING,
            # ABD's second reading costs ~2x an abd run: the full budget only, to keep --quick within its 15 minutes
            **({} if quick else {"abd_align": abd_align_args}),
        },
        scan_args=scan,
        extra_rows={} if quick else {a: {**every_attack, **per_attack.get(a, {})} for a in attacks},
    )
