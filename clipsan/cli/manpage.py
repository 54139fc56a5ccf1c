"""Render man/clipsan.1 from the Typer app (Click's own introspection) plus hand-written sections.

Run ``python -m clipsan.cli.manpage > man/clipsan.1`` after changing a command;
a test checks the committed page matches.
"""

from __future__ import annotations

import sys

from clipsan import __version__

# What each command's --format json report holds (stable keys; fractions are 0-1 floats).
JSON_KEYS = {
    "eval": [
        ("data, classes, templates, topk", "the labelled set, its class count, the templates used, the k values"),
        ("models[]", "one entry per MODEL: model, arch, sha256, trigger (spec or null), target"),
        ("models[].ca", "object k -> CA@k (fraction of clean images whose class is in the top k)"),
        ("models[].asr", "object k -> ASR@k over non-target images, or null without --trigger"),
        ("models[].n_images, n_asr_images", "images behind CA and behind ASR"),
        ("models[].skipped", "unreadable images skipped, by reason"),
    ],
    "purify": [
        ("output, run_dir", "the purified .safetensors and the run directory"),
        ("method, arch, arch_source", "recipe; architecture and how it was found (flag, metadata, inferred)"),
        ("source_sha256", "sha256 of MODEL"),
        ("steps, epochs, seconds, resumed_from_step", "training length and time; the step a --resume started from (null if none)"),
        ("samples, skipped", "usable training pairs; pairs skipped by reason (missing_file, empty_caption, corrupt_image)"),
        ("final", "the last logged metrics (step, lr, loss and each loss term, images_per_s)"),
    ],
    "scan": [
        ("schema_version, tool{name,version}", "report format version (2) and the clipsan that wrote it"),
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
        ("models[].model, sha256, arch, arch_source, image_size", "the scanned checkpoint"),
        ("models[].reference", "{model, sha256, arch} of --reference, or null"),
        ("models[].verdict, backdoor", '"clean" or "backdoor", and the same as a boolean'),
        ("models[].statistic, threshold", "DECREE's PL1 and its threshold"),
        (
            "models[].fired_signals[], signals[]",
            "per signal (decree, universal-perturbation, reference-divergence with --reference, target-alignment): name, statistic, "
            "threshold, threshold_source, fires_when, fired, counted, inversion_succeeded, steps",
        ),
        ("models[].target", "likely target: label, similarity, source, template, candidates[], from_signal"),
        ("models[].trigger", "png, mask_png, examples_png (DECREE's inverted trigger in the run dir), pl1, others (the other signals' PNGs)"),
        ("models[].probes", "source, synthetic (true without --data), data, count, skipped, description"),
        ("models[].budget, seed, device, precision, run_dir, started_utc, seconds", "how the model's scan ran"),
    ],
    "poison": [
        ("output, run_dir, arch, arch_source, steps, epochs, seconds", "as for purify"),
        ("trigger, target", "the trigger spec recorded in the victim's metadata, and the target"),
        ("poisoned, eligible, rate, caption_mode", "pairs poisoned out of the eligible ones"),
        ("badclip", "for --trigger badclip: side, objective, loss_before, loss_after, png, reused"),
    ],
    "lab": [
        ("rows[]", "attack, defense, model, ca {k: fraction}, asr {k: fraction} or null, n_images"),
        ("scan[]", "model, attack, verdict, statistic, threshold, target_guess"),
        ("timings", "seconds per stage and in total"),
        ("settings", "budget, seed, architecture and training settings used"),
    ],
}

EXIT_STATUS = [
    ("0", "success"),
    ("1", "scan only: backdoor evidence found (in any MODEL)"),
    (
        "2",
        "bad input or usage (options must be spelled out in full: abbreviations are refused); the message names the file, line or field and what was expected. "
        "scan: also when any MODEL could not be read, even if another was flagged (the report lists both)",
    ),
    ("3", "interrupted by SIGINT/SIGTERM after a resumable checkpoint was written; rerun with --resume --run-dir DIR"),
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
            "MODEL arguments accept .safetensors (preferred), .pt/.pth/.bin state dicts (loaded with "
            "weights_only: a file that needs arbitrary unpickling is refused), or local-dir:FOLDER. "
            "The architecture comes from --arch, else the clipsan.arch metadata, else is inferred from the "
            "state dict's keys and shapes. Human text goes to stdout, notes and progress to stderr. "
            "Options must be spelled out in full; an unknown option or command is refused (exit 2) with "
            "the closest existing ones."
        ),
        ".SH COMMANDS",
    ]
    for name, command in command_sections(group).items():
        out += _command_lines(name, command)
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
        ".SH FILES",
        ".TP",
        "\\fIRUN_DIR/config.json\\fR, \\fIRUN_DIR/metrics.jsonl\\fR, \\fIRUN_DIR/checkpoints/\\fR",
        _esc("resolved options and input hashes; one JSON object per log step; the last two checkpoints."),
        ".TP",
        "\\fI$XDG_CACHE_HOME/clipsan/lab/\\fR",
        _esc("clean lab models, keyed by world, architecture and training settings."),
        ".SH SEE ALSO",
        "README.md in the clipsan distribution.",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    from clipsan.cli import click_command

    sys.stdout.write(render(click_command()))


if __name__ == "__main__":
    main()
