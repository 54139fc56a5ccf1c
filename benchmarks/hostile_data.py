"""What hostile data costs, before and after clipsan's bounds (issue #15).

    PYTHONPATH=. python benchmarks/hostile_data.py tokens   # BPE on a 10,000-character caption, whole vs cut
    PYTHONPATH=. python benchmarks/hostile_data.py bomb     # peak RSS decoding a PNG that declares 10000x10000
    PYTHONPATH=. python benchmarks/hostile_data.py index    # indexing a 20,000-row manifest (root confinement's cost)

``index`` uses only ``open_caption_dataset``, so it also runs on an older checkout
(PYTHONPATH=that checkout) for a before/after ratio. Runs alternate and medians are
printed; quote the machine's load beside them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tokens(repeats: int) -> None:
    from clipsan.data.tokens import fit_caption
    from clipsan.models import tokenizer_for

    tokenizer = tokenizer_for("ViT-B-32", 77)
    rng = random.Random(0)
    unbroken = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10_000))
    normal = "a small red circle above a blue square on a gray background"

    def whole():
        tokenizer.cache.clear()  # open_clip caches each word's BPE: measure the first encounter
        tokenizer([unbroken])

    def cut():
        tokenizer.cache.clear()
        tokenizer([fit_caption(unbroken, tokenizer)])

    pairs = [(_median_seconds(whole, 1), _median_seconds(cut, 1)) for _ in range(repeats)]  # alternated
    whole_s, cut_s = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    plain = _median_seconds(lambda: [tokenizer([normal]) for _ in range(1000)], repeats) / 1000
    fitted = _median_seconds(lambda: [tokenizer([fit_caption(normal, tokenizer)]) for _ in range(1000)], repeats) / 1000
    print(f"10,000-char unbroken caption: whole {whole_s:.3f} s, cut to {len(fit_caption(unbroken, tokenizer))} chars {cut_s:.3f} s ({whole_s / cut_s:.1f}x)")
    print(f"a normal caption: {plain * 1e6:.0f} us plain, {fitted * 1e6:.0f} us through fit_caption")


_CHILD = """
import io, resource, sys
from PIL import Image
from clipsan.data.transforms import decode_image, to_rgb  # imported by both readers: RSS before/after counts decoding only
data = open(sys.argv[2], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "pillow":
    image = Image.open(io.BytesIO(data))  # what clipsan did before its own limit: decode in full
    image.load()
    to_rgb(image)
else:
    assert decode_image(data) is None
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _png_declaring(width: int, height: int) -> bytes:
    """A real PNG of width x height black pixels: zeros compress ~1000:1, so it is small on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def bomb(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.png"
        path.write_bytes(_png_declaring(10_000, 10_000))
        for reader in ("pillow", "clipsan"):
            runs = [subprocess.run([sys.executable, "-c", _CHILD, reader, str(path)], capture_output=True, text=True, check=True) for _ in range(repeats)]
            growth = [float(run.stdout) for run in runs]
            print(f"{path.stat().st_size:,}-byte PNG declaring 10000x10000, {reader}: peak RSS grows {statistics.median(growth):,.0f} MiB")


def index(repeats: int, rows: int = 20_000) -> None:
    from PIL import Image

    from clipsan.data.captions import open_caption_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in range(20):
            (root / "images" / f"{folder:02d}").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "first.png")
        lines = ["image,caption"]
        for i in range(rows):
            relative = f"images/{i % 20:02d}/{i}.png"
            os.link(root / "first.png", root / relative)
            lines.append(f"{relative},a small red circle above a blue square number {i}")
        (root / "m.csv").write_text("\n".join(lines) + "\n")
        seconds = _median_seconds(lambda: open_caption_dataset(root), repeats)
        print(f"indexing a {rows:,}-row manifest: {seconds:.3f} s ({rows / seconds:,.0f} rows/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("tokens", "bomb", "index"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    {"tokens": tokens, "bomb": bomb, "index": index}[args.part](args.repeats)


if __name__ == "__main__":
    main()
