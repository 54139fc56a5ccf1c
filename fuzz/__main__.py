"""Run fuzz targets under atheris (libFuzzer), clipsan's modules instrumented for coverage.

    python -m fuzz TARGET [CORPUS_DIR...] [-libfuzzer_flag=value...]   one target, as long as asked
    python -m fuzz --each OUT_DIR [-libfuzzer_flag=value...]           every target in turn (CI: with
        -max_total_time=N), from its committed seeds, new inputs and findings under OUT_DIR/TARGET;
        the instrumented imports are paid once and each target runs in a forked child

clipsan's modules (and Python parsers it relies on: PIL's image plugins, torch's weights_only
unpickler) are instrumented, so libFuzzer's coverage guides the inputs. Defaults added unless
given: -timeout=20 (an input that takes longer is a hang) and -rss_limit_mb=4096 (a reader that
allocates more is a memory bomb).
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import atheris

# Top-level packages instrumented as they are imported (atheris matches whole packages: all of torch
# would be too slow); torch's weights_only unpickler, the pickle gate itself, is instrumented by function.
INSTRUMENTED = ["clipsan", "fuzz", "PIL"]
DEFAULTS = {"-timeout": "20", "-rss_limit_mb": "4096"}
SEEDS = Path(__file__).resolve().parent / "corpus"


def _instrument_pickle_gate() -> None:
    import torch._weights_only_unpickler as gate

    for func in (gate.Unpickler.load, gate.Unpickler.persistent_load, gate._read_global_instruction, gate.decode_long):
        atheris.instrument_func(func)


def _import_targets():
    with atheris.instrument_imports(include=INSTRUMENTED):
        import PIL.Image

        from fuzz import targets

        PIL.Image.init()  # image plugins load lazily: load them here, instrumented
    _instrument_pickle_gate()
    warnings.simplefilter("ignore")  # Pillow warns on most corrupt images: millions of lines, no finding
    return targets


def _fuzz(targets, name: str, args: list[str]) -> None:
    """Fuzz one target; libFuzzer exits the process when done (0) or on a finding (non-zero)."""
    target = targets.TARGETS[name]
    for flag, value in DEFAULTS.items():
        if not any(arg.startswith(flag + "=") for arg in args):
            args.append(f"{flag}={value}")

    prefix = next((arg.split("=", 1)[1] for arg in args if arg.startswith("-artifact_prefix=")), "./")

    def one_input(data: bytes) -> None:
        try:
            targets.run_one(target, data)
        except BaseException:
            # Keep the input before libFuzzer reports it: its own artifact can be lost when an
            # alarm (the -timeout watchdog) ends the process while the traceback prints.
            Path(f"{prefix}crash-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
            raise

    # The seeds once before libFuzzer's clock starts: a reader's first call fills its caches (the shape
    # tables of every open_clip architecture: seconds, more when instrumented), which is no hang.
    for seed in sorted((SEEDS / name).iterdir()):
        one_input(seed.read_bytes())
    atheris.Setup(args, one_input)
    try:
        atheris.Fuzz()
    finally:
        targets.cleanup()


def _each(targets, out: Path, flags: list[str]) -> int:
    failed = []
    for name in targets.TARGETS:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            _fuzz(targets, name, [sys.argv[0], str(folder), str(SEEDS / name), f"-artifact_prefix={folder}/", *flags])
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(f"fuzz {name}: exit {code}", file=sys.stderr, flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"fuzz: findings in {', '.join(failed)} (inputs under {out}/TARGET/crash-*)", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str]) -> None:
    if len(argv) < 2 or (argv[1].startswith("-") and argv[1] != "--each"):
        raise SystemExit("usage: python -m fuzz TARGET [CORPUS_DIR...] [-flag=value...] | --each OUT_DIR [-flag=value...]")
    if argv[1] == "--each":
        raise SystemExit(_each(_import_targets(), Path(argv[2]), argv[3:]))
    targets = _import_targets()
    if argv[1] not in targets.TARGETS:
        raise SystemExit(f"unknown target {argv[1]!r}: one of {', '.join(targets.TARGETS)}")
    _fuzz(targets, argv[1], [argv[0], *argv[2:]])


if __name__ == "__main__":
    main(sys.argv)
