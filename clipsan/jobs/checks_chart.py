"""RUN_DIR/verification.png: purify's checks at a glance, one panel per signal and one for held-out R@1.

Each panel plots a check's figure against its training step (the input's at step 0): a signal's
statistic with its threshold drawn dashed (a filled red dot: it fired; counted signals fire below
their threshold), R@1 with the guard (the input's R@1 less --max-utility-drop) drawn dashed. PIL
only; written through the scan's PNG writer.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from clipsan.scan.artifacts import write_png

PANEL_W, PANEL_H, MARGIN = 270, 200, 46
INK, GRID, LINE, FIRED, GUARD = (30, 30, 30), (225, 225, 225), (40, 90, 170), (200, 40, 40), (120, 120, 120)


def _panel(draw: ImageDraw.ImageDraw, left: int, title: str, points: list[tuple[int, float, bool]], limit: float | None, last_step: int) -> None:
    """One panel at x = ``left``: (step, value, fired) points, a dashed line at ``limit``."""
    top, width, height = 22, PANEL_W - MARGIN - 8, PANEL_H - 22 - 28
    x0, y0 = left + MARGIN, top
    values = [v for _, v, _ in points] + ([limit] if limit is not None else [])
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 0.05
    low, high = low - pad, high + pad

    def at(step: int, value: float) -> tuple[float, float]:
        return x0 + width * step / max(last_step, 1), y0 + height * (high - value) / (high - low)

    draw.text((left + 6, 4), title, fill=INK)
    draw.rectangle([x0, y0, x0 + width, y0 + height], outline=GRID)
    for value in (low + pad, high - pad):
        draw.text((left + 2, at(0, value)[1] - 5), f"{value:.3g}", fill=INK)
    draw.text((x0, y0 + height + 6), "step 0", fill=INK)
    draw.text((x0 + width - 40, y0 + height + 6), f"{last_step}", fill=INK)
    if limit is not None:
        y = at(0, limit)[1]
        for x in range(int(x0), int(x0 + width), 8):
            draw.line([(x, y), (min(x + 4, x0 + width), y)], fill=GUARD)
        draw.text((x0 + width - 44, y - 13), f"{limit:.3g}", fill=GUARD)
    xy = [at(step, value) for step, value, _ in points]
    if len(xy) > 1:
        draw.line(xy, fill=LINE, width=2)
    for (x, y), (_, _, fired) in zip(xy, points):
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=FIRED if fired else LINE, fill=FIRED if fired else (255, 255, 255))


def save_checks_png(checks: list[dict], max_utility_drop: float, path: Path) -> None:
    """``checks``: verification.json's records, the input's first."""
    names = [s["name"] for s in checks[0]["signals"]]
    image = Image.new("RGB", (PANEL_W * (len(names) + 1), PANEL_H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    last_step = max(c["step"] for c in checks)
    for index, name in enumerate(names):
        entries = [(c["step"], next((s for s in c["signals"] if s["name"] == name), None)) for c in checks]
        points = [(step, s["statistic"], s["fired"]) for step, s in entries if s is not None]
        threshold = entries[-1][1]["threshold"] if entries[-1][1] is not None else None
        counted = "" if all(s["counted"] for _, s in entries if s is not None) else ", not counted"
        _panel(draw, PANEL_W * index, f"{name}{counted}", points, threshold, last_step)
    r1 = [(c["step"], c["r1"], False) for c in checks if c["r1"] is not None]
    if r1:
        _panel(draw, PANEL_W * len(names), "held-out R@1 (guard dashed)", r1, r1[0][1] - max_utility_drop, last_step)
    write_png(image, path)
