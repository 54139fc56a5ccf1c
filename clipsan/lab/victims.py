"""The lab's victims: one poisoning recipe per attack, tuned for the 32-px synthetic world.

Budget: about a minute of poisoning per victim on one CPU thread (one epoch
of the world's 20k pairs at batch 128, 156 steps; two epochs in ``--quick``,
whose clean model is weaker). Paper settings (0.3 %
poisoning, 10 epochs at lr 1e-5 on 500K pairs) implant nothing in that budget,
so the lab poisons more pairs at a higher learning rate. Target quality
(DESIGN.md section 10): ASR@1 >= 0.90 with CA@1 within 0.03 of the clean model.
The comments in ``LAB_ATTACKS`` give what the calibration measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipsan.config.attacks import BadClipConfig

LAB_ATTACKS_QUICK = ("badnet", "blended", "badclip")
# PAR's structured triggers (its paper: CleanCLIP-style cleaners fail on them), full budget only.
LAB_ATTACKS_STRUCTURED = ("badnet-stripes", "blended-triangles", "blended-text")
LAB_ATTACKS_FULL = LAB_ATTACKS_QUICK + ("sig", "wanet", "label-consistent") + LAB_ATTACKS_STRUCTURED


@dataclass(frozen=True)
class LabAttack:
    trigger: str
    rate: float
    epochs: int = 1
    # The quick clean model (CA@1 ~0.8) is still learning, so one poisoning epoch
    # also spends itself on clean pairs: ASR@1 0.70-0.96 over the three quick attacks
    # on two quick clean models; two epochs give 0.89-0.995 (CA@1 rises with them).
    quick_epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 128
    warmup: int = 10
    trigger_size: int | None = None  # pixels at 32 px
    label_consistent: bool = False
    # The world's own captions that mention the banana: template captions ("a photo
    # of a banana.") look like the zero-shot prompts and cost up to 0.25 of CA@1 here.
    natural_captions: bool = True
    badclip: BadClipConfig = field(default_factory=BadClipConfig)


# Calibrated (one epoch) on a full-budget clean model (CA@1 0.984; trigger alone: ASR@1 <= 0.01,
# the optimized BadCLIP patch 0.22). Comments: victim ASR@1 / CA@1 measured.
LAB_ATTACKS: dict[str, LabAttack] = {
    # 8 px (56 at 224) patch at a random position: 6 px gave 0.86; 8 px 0.95 / 0.974, but only 0.848
    # on the 3-seed lab's clean model (CA@1 0.981), so two epochs, as blended needed there.
    "badnet": LabAttack("badnet", rate=0.05, epochs=2, trigger_size=8),
    # rate 0.05 gave 0.935; 0.1 gives 0.965 / 0.971, but only 0.837 on the next full clean model
    # (rate 0.15: 0.88); 2 epochs give 0.993 / 0.989 there. Quick: 2 epochs gave 0.89-0.98 on two
    # quick clean models, 3 epochs lift the weaker one to 0.94 (0.15 at 2 epochs: 0.94 too).
    "blended": LabAttack("blended", rate=0.1, epochs=2, quick_epochs=3),
    # 6 px centre patch optimized 10 epochs at lr 3e-2 (~6 s): 0.978 / 0.971 (0.02: 0.958, 0.05: 0.99).
    "badclip": LabAttack("badclip", rate=0.03, trigger_size=6, badclip=BadClipConfig(epochs=10, lr=3e-2, images=1000)),
    "sig": LabAttack("sig", rate=0.05),  # 0.987 / 0.971
    # WaNet's s=0.5 moves pixels by ~0.25 px at 32 px and implants nothing in a minute
    # (ASR 0.0); s=8 gave 0.58, s=12 0.92 / 0.958 (lr 1e-3); s=16 at lr 5e-4 0.95 / 0.971.
    "wanet": LabAttack("wanet:s=16", rate=0.1, lr=5e-4),
    # All 938 pairs whose caption names the banana. Label-consistent needs a patch that
    # hides the object: 10-16 px gave 0.06-0.75; 20 px at lr 5e-4 0.982 / 0.961.
    "label-consistent": LabAttack("badnet", rate=1.0, trigger_size=20, lr=5e-4, label_consistent=True),
    # PAR's structured triggers at badnet's and blended's settings (calibration: BENCHMARKS.md, "PAR's structured triggers").
    "badnet-stripes": LabAttack("badnet-stripes", rate=0.05, epochs=2, trigger_size=8),
    "blended-triangles": LabAttack("blended-triangles", rate=0.1, epochs=2),
    "blended-text": LabAttack("blended-text", rate=0.1, epochs=2),
}
