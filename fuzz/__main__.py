"""``python -m fuzz TARGET [CORPUS_DIR...] [-libfuzzer_flag=value...]``: run one target under atheris.

clipsan's modules (and the Python parsers it relies on: PIL's image plugins, torch's
weights_only unpickler) are instrumented, so libFuzzer's coverage guides the inputs.
Defaults added unless given: -timeout=20 (an input that takes longer is a hang) and
-rss_limit_mb=4096 (a reader that allocates more is a memory bomb).
"""

from __future__ import annotations

import sys
import warnings

import atheris

# Top-level packages instrumented as they are imported (atheris matches whole packages: all of torch
# would be too slow); torch's weights_only unpickler, the pickle gate itself, is instrumented by function.
INSTRUMENTED = ["clipsan", "fuzz", "PIL"]
DEFAULTS = {"-timeout": "20", "-rss_limit_mb": "4096"}


def _instrument_pickle_gate() -> None:
    import torch._weights_only_unpickler as gate

    for func in (gate.Unpickler.load, gate.Unpickler.persistent_load, gate._read_global_instruction, gate.decode_long):
        atheris.instrument_func(func)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        raise SystemExit("usage: python -m fuzz TARGET [CORPUS_DIR...] [-libfuzzer_flag=value...]")
    name = argv[1]
    with atheris.instrument_imports(include=INSTRUMENTED):
        import PIL.Image

        from fuzz import targets

        PIL.Image.init()  # image plugins load lazily: load them here, instrumented
    _instrument_pickle_gate()
    if name not in targets.TARGETS:
        raise SystemExit(f"unknown target {name!r}: one of {', '.join(targets.TARGETS)}")
    target = targets.TARGETS[name]
    args = [argv[0], *argv[2:]]
    for flag, value in DEFAULTS.items():
        if not any(arg.startswith(flag + "=") for arg in args):
            args.append(f"{flag}={value}")

    def one_input(data: bytes) -> None:
        targets.run_one(target, data)

    warnings.simplefilter("ignore")  # Pillow warns on most corrupt images: millions of lines, no finding
    atheris.Setup(args, one_input)
    try:
        atheris.Fuzz()
    finally:
        targets.cleanup()


if __name__ == "__main__":
    main(sys.argv)
