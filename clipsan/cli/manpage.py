"""Render man/clipsan.1 from the Typer app (Click's own introspection) plus hand-written sections.

Run ``python -m clipsan.cli.manpage > man/clipsan.1`` after changing a command;
a test checks the committed page matches.
"""

from __future__ import annotations

import sys

from clipsan import __version__
from clipsan.config.limits import MAX_CAPTION_CHARS, MAX_CAPTION_FILE_BYTES, MAX_IMAGE_PIXELS

# What each command's --format json report holds (stable keys; fractions are 0-1 floats).
JSON_KEYS = {
    "eval": [
        ("data, classes, templates, topk", "the labelled set, its class count, the templates used, the k values"),
        ("models[]", "one entry per MODEL: model, sha256, trigger (spec or null), target, and what it was read as (as for purify: layout, arch, ...)"),
        ("models[].ca", "object k -> CA@k (fraction of clean images whose class is in the top k)"),
        ("models[].asr", "object k -> ASR@k over non-target images, or null without --trigger; a figure over zero images is null"),
        ("models[].n_images, n_asr_images", "images behind CA and behind ASR"),
        ("models[].skipped", "images skipped, by reason (corrupt_image, missing_file, empty_label, outside_root, oversized_row)"),
    ],
    "purify": [
        ("output, output_format, run_dir", "the purified model (a file, or a folder for hf / open_clip), how it was written, and the run directory"),
        ("method", "the recipe"),
        (
            "layout",
            "how MODEL was read: safetensors, torch, openai (clip package), cleanclip (CleanCLIP/BadCLIP checkpoint), "
            "transformers (folder), transformers-file (its weights alone), open_clip (hub folder)",
        ),
        (
            "arch, arch_source",
            "architecture and where it came from: flag, config.json, open_clip_config.json, metadata, inferred (by shape), shapes (read from them)",
        ),
        ("activation, activation_source", "quick_gelu or gelu, and the evidence (the config's field, metadata, the layout's origin, or the stated default)"),
        ("source_sha256", "sha256 of MODEL"),
        ("steps, epochs, seconds, resumed_from_step", "training length and time; the step a --resume started from (null if none)"),
        (
            "samples, skipped",
            "usable training pairs; what was skipped, by reason: missing_file, empty_caption, oversized_caption, outside_root, "
            "truncated_shard (shards cut short), corrupt_image (each time an unreadable image's turn came; another pair took its place)",
        ),
        ("final", "the last logged metrics (step, lr, loss and each loss term, images_per_s)"),
        ("holdout", "{pairs, usable}: the pairs of --data held out and never trained on (0 with --holdout 0), and the usable pairs they came from"),
        (
            "utility",
            "retrieval on the held-out pairs, null when none were held out: {pairs (measured), corrupt_image (left out), before, after}; "
            "before and after are {i2t, t2i}, each an object k -> R@k for k = 1, 5 (image->text, text->image; null over zero pairs); "
            "every epoch end's {i2t, t2i} is the utility field of that step's metrics.jsonl line",
        ),
        (
            "verification.verdict, statement",
            "the backdoor check: removed (a counted signal fired on MODEL, none on the output), remains, none-before (nothing fired on "
            "MODEL: nothing proved about a backdoor the scan cannot see) or not-run (reason says why: --verify-budget off, fewer than 32 "
            "held-out images); the verdict in words",
        ),
        (
            "verification.required, passed",
            "whether --until-clean or --require-clean was given, and whether the written model passes the check (no counted signal fires, "
            "held-out R@1 within --max-utility-drop); required and not passed is exit 1; passed is null when not run",
        ),
        (
            "verification.signals[]",
            "per signal (decree, universal-perturbation, target-alignment): name, statistic_name (PL1, Linf, ratio), before, after "
            "(statistics), threshold, threshold_source, fires_when, counted, fired_before, fired_after",
        ),
        (
            "verification.before, after",
            "{step, epoch, source (measured | scan-report, with scan_report and probes), fired[], target, r1}: the input's check and the written model's",
        ),
        ("verification.utility_guard", "{measure (mean of i2t and t2i R@1), max_drop, before, after, drop, within}"),
        (
            "verification.until_clean, every, stopped, outcome",
            "--until-clean given; when it checks (epoch, or N for --verify-every N); {step, epoch} of the check training stopped at, "
            "or null; how it ended, in words (null without --until-clean)",
        ),
        (
            "verification.budget, steps, seed, probes, checks, seconds, history, chart",
            "the scan budget, inversion steps and seed of every check, the probes ({source: held-out, count, skipped, data}), how many "
            "checks were made and their time, RUN_DIR/verification.json (every check: step, epoch, retrieval, r1, fired, passed, signals) "
            "and RUN_DIR/verification.png (each signal's statistic and R@1 per check, thresholds and the guard dashed)",
        ),
    ],
    "scan": [
        ("schema_version, tool{name,version}", "report format version (3) and the clipsan that wrote it"),
        (
            "verdict, backdoor",
            '"backdoor" if any MODEL was flagged (exit 1), "incomplete" if none was but some could not be read, else "clean"; backdoor as a boolean',
        ),
        ("summary", "{models, scanned, flagged, errors}: counts over the MODEL arguments"),
        ("models[]", "one row per scanned MODEL, in argument order, with the keys below"),
        ("errors[]", "{model, error} per MODEL that could not be read (exit 2; the others are still scanned)"),
        ("run_dir, seconds", "the call's run directory (one NN-NAME subfolder per MODEL when there are several) and its time"),
        (
            "one MODEL",
            "its row's keys are also at the top level (schema 1's shape, which scripts read); verdict, backdoor, seconds and run_dir are then the model's",
        ),
        ("models[].model, sha256, image_size", "the scanned checkpoint"),
        ("models[].layout, arch, arch_source, activation, activation_source", "what it was read as (as for purify)"),
        ("models[].reference", "{model, sha256, arch} of --reference, or null"),
        ("models[].verdict, backdoor", '"clean" or "backdoor", and the same as a boolean'),
        ("models[].statistic, threshold", "DECREE's PL1 and its absolute threshold"),
        (
            "models[].fired_signals[], signals[]",
            "per signal (decree, universal-perturbation, reference-divergence with --reference, target-alignment): name, statistic, "
            "threshold, threshold_source (lab-32px, lab-64px, extrapolated-from-64px, user:FILE, user:FLAG; -clip appended on a "
            "SigLIP model), fires_when, rule (absolute, or reference-relative: the ratio decided), fired, counted, inversion_succeeded, steps",
        ),
        (
            "models[].signals[] with --reference",
            "decree and universal-perturbation also: reference_statistic, reference_inversion_succeeded, ratio (MODEL / reference, "
            "null when the reference's inversion found no collapse: the absolute threshold decides, rule_note says so), ratio_threshold, "
            "ratio_threshold_source (reference-relative), absolute_would_fire, reference_below_threshold (the reference itself under "
            "the absolute threshold)",
        ),
        ("models[].calibration", "with --calibration: {file, entry (the one applied, or null), used, note (why not), differences[]}; else null"),
        ("models[].warnings[]", "e.g. a verdict resting on an extrapolated threshold, with the fix (--reference or --calibration)"),
        ("models[].target", "likely target: label, similarity, source, template, candidates[], from_signal"),
        ("models[].trigger", "png, mask_png, examples_png (DECREE's inverted trigger in the run dir), pl1, others (the other signals' PNGs)"),
        ("models[].probes", "source, synthetic (true without --data), data, count, skipped, description"),
        (
            "models[].budget, steps, seed, device, precision, run_dir, started_utc, seconds",
            "how the model's scan ran (steps: optimizer steps per inversion at most)",
        ),
    ],
    "calibrate": [
        ("out, seconds", "the calibration file written and the time"),
        (
            "calibration",
            "the file's document: format (clipsan-scan-calibration), version (1), tool, rule {factor, text}, budget {probes, steps, "
            "batch_size}, seeds[], probes {source, data}, reference, models[] {model, sha256, family, arch, image_size}, entries[] "
            "{family, arch, image_size, signals {SIGNAL: {statistics[], failed, minimum, threshold}}}",
        ),
        ("scans[]", "{model, seed, statistics {signal: value, or null when the inversion found no collapsing trigger}}"),
    ],
    "poison": [
        ("output, output_format, run_dir, layout, arch, arch_source, activation, activation_source, steps, epochs, seconds", "as for purify"),
        ("trigger, target", "the trigger spec recorded in the victim's metadata, and the target"),
        ("poisoned, eligible, rate, caption_mode", "pairs poisoned out of the eligible ones"),
        ("badclip", "for --trigger badclip: side, objective, loss_before, loss_after, png, reused"),
    ],
    "lab": [
        (
            "rows[]",
            "attack, defense, model (first seed's), n_images; ca {k: fraction} and asr {k: fraction} or null: means over the defense seeds; "
            "ca_range, asr_range {k: [min, max]}; seeds[] {seed, model, ca, asr, n_images}: one per defense seed (one for clean and victim rows)",
        ),
        ("scan[]", "model, attack, verdict, statistic, threshold, target_guess"),
        ("timings", "seconds per stage and in total"),
        ("settings", "budget, seed, defense_seeds[], architecture and every stage's flags (plan)"),
    ],
}

# The checkpoint layouts MODEL may be, one example each (README's "Checkpoints" says the same).
CHECKPOINTS = [
    ("model.safetensors", "an open_clip state dict; clipsan's outputs carry their architecture and activation in metadata"),
    ("epoch_10.pt", "a .pt/.pth/.bin state dict, read with weights_only: open_clip's, the OpenAI clip package's (QuickGELU), CleanCLIP/BadCLIP's checkpoints"),
    ("clip-vit-base-patch32/", "a transformers CLIPModel folder: config.json + model.safetensors, sharded, or pytorch_model.bin; fp16/bf16 upcast"),
    ("clip-vit-base-patch32/model.safetensors", "its weights alone: the architecture is matched by shape (or read from the shapes, assumptions stated)"),
    ("CLIP-ViT-B-32-laion2B/", "an open_clip hub folder: open_clip_config.json + open_clip_model.safetensors (local-dir:FOLDER works too)"),
    (
        "siglip-so400m-patch14-384/",
        "the SigLIP family: a transformers SiglipModel / Siglip2Model folder or its weights alone, an open_clip SigLIP folder or state dict "
        "(ViT-B-16-SigLIP, ViT-SO400M-14-SigLIP-384, ViT-B-16-SigLIP2, ...); its tokenizer.json or spiece.model is read from its folder, "
        "never downloaded (none there: exit 2); purify trains it with SigLIP's sigmoid loss, logit_bias included (docs/siglip.md)",
    ),
]
CHECKPOINT_NOTES = (
    "The format is read from the bytes, not the suffix. The activation (QuickGELU for OpenAI-trained weights) comes from the "
    "checkpoint's config or metadata, else the layout's origin, else GELU with a warning naming the --arch NAME-quickgelu that "
    "overrides it; stderr says where each fact came from. Weights with NaN/inf, other families (ALIGN, other text towers) "
    "and files with missing or extra weights are refused (exit 2). purify and poison write the model back in MODEL's layout "
    "(--out-format auto)."
)

EXIT_STATUS = [
    ("0", "success"),
    (
        "1",
        "scan: backdoor evidence found (in any MODEL). purify with --until-clean or --require-clean: the written model does not pass "
        "the backdoor check (a counted signal still fires, or held-out R@1 fell more than --max-utility-drop); it is written all the same",
    ),
    (
        "2",
        "bad input or usage (options must be spelled out in full: abbreviations are refused); the message names the file, line or field and what was expected. "
        "scan: also when any MODEL could not be read, even if another was flagged (the report lists both)",
    ),
    (
        "3",
        "interrupted by SIGINT/SIGTERM after a resumable checkpoint was written; rerun with --resume --run-dir DIR "
        "(lab: its running stages were stopped the same way; rerun the same command)",
    ),
]


# How much clipsan reads from data it is handed (clipsan.config.limits, clipsan.data.paths).
DATA_LIMITS = [
    (
        "--max-image-pixels N",
        f"images over N pixels (default {MAX_IMAGE_PIXELS} = 8192x8192) are refused from their header, before any pixel is decoded, "
        "and count as corrupt_image; for the --data of every command, scan's probes included (patch:FILE triggers are held to the default)",
    ),
    (
        "--allow-outside-root",
        "by default only files whose real path (links resolved) lies inside the data folder (a manifest's own folder) are read; "
        "absolute or ../ manifest paths and links that lead elsewhere are skipped as outside_root",
    ),
    (
        "captions",
        f"a caption over {MAX_CAPTION_CHARS} characters, or a CSV field or caption file over {MAX_CAPTION_FILE_BYTES} bytes, is skipped as "
        "oversized_caption; a caption with more tokens than the model keeps is cut to those before BPE (a caption that fits is never changed)",
    ),
    ("unreadable images", "in training, each is replaced by another pair drawn from (seed, epoch, index); a set with no readable image is refused"),
]


def _esc(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def _param_lines(param, ctx) -> list[str]:
    record = param.get_help_record(ctx)
    if record is None:
        return []
    names, help_text = record
    if param.param_type_name == "argument":
        return [".TP", f"\\fI{_esc(names.split()[0])}\\fR", _esc(help_text)]
    flags, _, metavar = names.partition(" ")
    shown = ", ".join(f"\\fB{_esc(f.strip())}\\fR" for f in flags.split(","))
    if metavar:
        shown += f" \\fI{_esc(metavar)}\\fR"
    return [".TP", shown, _esc(help_text)]


def command_sections(group) -> dict:
    """Each command's Click object, by name, in the order `clipsan --help` lists them."""
    return dict(group.commands)


def _command_lines(name: str, command) -> list[str]:
    import typer

    ctx = typer.Context(command, info_name=name)
    out = [".SS " + _esc(f"clipsan {name}"), _esc(command.help or "")]
    panels: dict[str, list] = {}
    for param in command.get_params(ctx):
        if param.name == "help":
            continue  # -h/--help is documented once, not per command
        default = "Arguments" if param.param_type_name == "argument" else "Options"
        panels.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(param)
    for title, params in panels.items():
        out += [".PP", f"\\fI{_esc(title)}\\fR"]
        for param in params:
            out += _param_lines(param, ctx)
    if command.epilog:
        out += [".PP", "\\fBExamples\\fR", ".RS", ".nf"]
        out += [_esc(line.strip()) for line in command.epilog.splitlines()[1:] if line.strip()]
        out += [".fi", ".RE"]
    if name in JSON_KEYS:
        out += [".PP", "\\fBJSON report keys\\fR (\\-\\-format json):"]
        for key, meaning in JSON_KEYS[name]:
            out += [".TP", f"\\fB{_esc(key)}\\fR", _esc(meaning)]
    return out


def render(group) -> str:
    out = [
        f'.TH CLIPSAN 1 "" "clipsan {__version__}" "User Commands"',
        ".SH NAME",
        "clipsan \\- scan, purify and evaluate CLIP checkpoints for backdoors",
        ".SH SYNOPSIS",
        "\\fBclipsan\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _esc(group.help or ""),
        ".PP",
        _esc(
            "MODEL arguments accept the layouts listed under CHECKPOINTS; a file that needs arbitrary unpickling is refused. "
            "The architecture comes from --arch, else the checkpoint's config, else the clipsan.arch metadata, else is inferred "
            "from the state dict's keys and shapes. Human text goes to stdout, notes and progress to stderr. JSON is strict "
            "(never NaN or Infinity). "
            "Options must be spelled out in full; an unknown option or command is refused (exit 2) with "
            "the closest existing ones."
        ),
        ".SH COMMANDS",
    ]
    for name, command in command_sections(group).items():
        out += _command_lines(name, command)
    out += [".SH DATA LIMITS"]
    for term, meaning in DATA_LIMITS:
        out += [".TP", f"\\fB{_esc(term)}\\fR", _esc(meaning)]
    out += [".SH CHECKPOINTS"]
    for example, meaning in CHECKPOINTS:
        out += [".TP", f"\\fI{_esc(example)}\\fR", _esc(meaning)]
    out += [".PP", _esc(CHECKPOINT_NOTES)]
    out += [".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        out += [".TP", f"\\fB{code}\\fR", _esc(meaning)]
    out += [
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBNO_COLOR\\fR",
        _esc("when set (or when stdout is not a terminal), help and errors are plain text: no colour, no box drawing."),
        ".TP",
        "\\fBXDG_CACHE_HOME\\fR",
        _esc("where the lab caches its clean models (default ~/.cache)."),
        ".TP",
        "\\fBMALLOC_PERTURB_\\fR, \\fBGLIBC_TUNABLES\\fR (and glibc's other \\fBMALLOC_*_\\fR)",
        _esc(
            "for eager training on CPU clipsan tells glibc to keep freed memory for the next step (no page faults each"
            " step; the process keeps its peak); with --compile it has glibc return every block over 128 KiB at once."
            " Set any glibc malloc tunable, e.g. MALLOC_PERTURB_=0 (which changes nothing else), and clipsan leaves the"
            " allocator as you set it."
        ),
        ".SH FILES",
        ".TP",
        "\\fIRUN_DIR/config.json\\fR, \\fIRUN_DIR/metrics.jsonl\\fR, \\fIRUN_DIR/checkpoints/\\fR",
        _esc(
            "resolved options and input hashes (purify: inputs.holdout, inputs.verification); one JSON object per log step (purify: every"
            " epoch end is one, with the held-out retrieval as its utility field and, with --until-clean, the check as its verification"
            " field); the last two checkpoints. purify: RUN_DIR/verification.json and verification.png, the backdoor checks' history."
        ),
        ".TP",
        "\\fI$XDG_CACHE_HOME/clipsan/lab/\\fR",
        _esc("clean lab models, keyed by world, architecture and training settings."),
        ".TP",
        "\\fIOUT/lab.json\\fR, \\fIOUT/lab.md\\fR, \\fIOUT/pareto.png\\fR",
        _esc("the lab's report: JSON, the tables (mean and range over defense seeds, the target check), and per attack each defense's (CA@1, ASR@1)."),
        ".SH SEE ALSO",
        "README.md in the clipsan distribution.",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    from clipsan.cli import click_command

    sys.stdout.write(render(click_command()))


if __name__ == "__main__":
    main()
