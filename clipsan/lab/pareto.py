"""The lab's Pareto plot: per attack, every defense's (CA@1, ASR@1), drawn with PIL.

One panel per attack: x = CA@1, y = ASR@1 on a square-root scale (so the few-percent
region the target lives in is readable), the victim as a black cross, each defense as a
coloured dot at its mean with whiskers over its seeds' range, and the target region
(ASR@1 <= 5% within 3 points of the victim's CA@1) shaded.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clipsan.atomic import atomic_write_bytes, write_errors
from clipsan.lab.tables import TARGET_ASR, TARGET_CA_TOLL, attacks_of

PANEL_W, PANEL_H, COLUMNS = 420, 330, 3
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 30, 44
# One colour per defense row: the full lab has 11, so the ten tab10 colours are followed by darker ones.
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
    "#000080", "#8b0000", "#006400", "#ffd700", "#00ffff",
]  # fmt: skip
ASR_TICKS = (0.0, 0.05, 0.25, 0.5, 1.0)


def _font(size: int):
    return ImageFont.load_default(size=size)


class _Axes:
    """Maps (CA, ASR) fractions to pixels of one panel whose top-left corner is (x0, y0)."""

    def __init__(self, x0: int, y0: int, ca_lo: float, ca_hi: float):
        self.x0, self.y0, self.ca_lo, self.ca_hi = x0, y0, ca_lo, ca_hi
        self.w, self.h = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM

    def x(self, ca: float) -> float:
        return self.x0 + LEFT + (ca - self.ca_lo) / (self.ca_hi - self.ca_lo) * self.w

    def y(self, asr: float) -> float:
        return self.y0 + TOP + (1.0 - math.sqrt(max(0.0, asr))) * self.h


def _ca_limits(rows: list[dict], victim_ca: float) -> tuple[float, float]:
    values = [victim_ca - TARGET_CA_TOLL - 0.01, victim_ca + 0.005]
    for r in rows:
        values += [r["ca"]["1"], *((r.get("ca_range") or {}).get("1") or [])]
    lo, hi = min(values), max(values)
    step = 0.02 if hi - lo <= 0.12 else 0.05
    return max(0.0, math.floor(lo / step) * step), min(1.0, math.ceil(hi / step) * step)


def _ticks(lo: float, hi: float) -> list[float]:
    step = 0.02 if hi - lo <= 0.12 else 0.05
    return [lo + i * step for i in range(round((hi - lo) / step) + 1)]


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str, rows: list[dict], colours: dict[str, str]) -> None:
    victim = next(r for r in rows if r["defense"] == "none")
    defended = [r for r in rows if r["defense"] != "none"]
    lo, hi = _ca_limits(rows, victim["ca"]["1"])
    ax = _Axes(x0, y0, lo, hi)
    small = _font(11)
    # target region
    draw.rectangle([ax.x(max(lo, victim["ca"]["1"] - TARGET_CA_TOLL)), ax.y(TARGET_ASR), ax.x(hi), ax.y(0.0)], fill="#d9f2d9")
    # frame, grid, ticks
    draw.rectangle([ax.x(lo), ax.y(1.0), ax.x(hi), ax.y(0.0)], outline="#444444")
    for t in ASR_TICKS:
        draw.line([ax.x(lo), ax.y(t), ax.x(hi), ax.y(t)], fill="#e6e6e6")
        draw.text((ax.x(lo) - 6, ax.y(t)), f"{100 * t:g}", fill="black", font=small, anchor="rm")
    for t in _ticks(lo, hi):
        draw.line([ax.x(t), ax.y(0.0), ax.x(t), ax.y(0.0) + 4], fill="#444444")
        draw.text((ax.x(t), ax.y(0.0) + 6), f"{100 * t:.0f}", fill="black", font=small, anchor="mt")
    draw.text((x0 + LEFT + ax.w / 2, y0 + 8), title, fill="black", font=_font(14), anchor="mt")
    draw.text((x0 + LEFT + ax.w / 2, y0 + PANEL_H - 12), "CA@1 (%)", fill="black", font=small, anchor="mm")
    draw.text((x0 + 4, y0 + TOP - 12), "ASR@1 (%)", fill="black", font=small, anchor="lm")
    # victim
    vx, vy = ax.x(victim["ca"]["1"]), ax.y(victim["asr"]["1"])
    draw.line([vx - 6, vy - 6, vx + 6, vy + 6], fill="black", width=2)
    draw.line([vx - 6, vy + 6, vx + 6, vy - 6], fill="black", width=2)
    # defenses
    for r in defended:
        colour = colours[r["defense"]]
        cx, cy = ax.x(r["ca"]["1"]), ax.y(r["asr"]["1"])
        ca_range, asr_range = (r.get("ca_range") or {}).get("1"), (r.get("asr_range") or {}).get("1")
        if ca_range:
            draw.line([ax.x(ca_range[0]), cy, ax.x(ca_range[1]), cy], fill=colour, width=1)
        if asr_range:
            draw.line([cx, ax.y(asr_range[0]), cx, ax.y(asr_range[1])], fill=colour, width=1)
        draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour, outline="black")


def draw_pareto(rows: list[dict], path: Path, family: str | None = None) -> Path:
    """Write the plot of ``rows`` (lab rows, see ``clipsan.lab.tables``) to ``path`` (PNG); ``family`` is named in each panel's title."""
    attacks = attacks_of(rows)
    defenses = list(dict.fromkeys(r["defense"] for r in rows if r["attack"] != "none" and r["defense"] != "none"))
    colours = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(defenses)}
    n_rows = max(1, math.ceil(len(attacks) / COLUMNS))
    legend_h = 26 * math.ceil((len(defenses) + 2) / 4) + 10
    image = Image.new("RGB", (PANEL_W * min(COLUMNS, max(1, len(attacks))), PANEL_H * n_rows + legend_h), "white")
    draw = ImageDraw.Draw(image)
    for i, attack in enumerate(attacks):
        title = f"{attack} ({family})" if family else attack
        _panel(draw, PANEL_W * (i % COLUMNS), PANEL_H * (i // COLUMNS), title, [r for r in rows if r["attack"] == attack], colours)
    entries = [("victim", None)] + [(d, colours[d]) for d in defenses] + [("target region", "#d9f2d9")]
    font = _font(12)
    for i, (name, colour) in enumerate(entries):
        x, y = 16 + (i % 4) * 240, PANEL_H * n_rows + 12 + (i // 4) * 26
        if colour is None:
            draw.line([x, y, x + 10, y + 10], fill="black", width=2)
            draw.line([x, y + 10, x + 10, y], fill="black", width=2)
        elif name == "target region":
            draw.rectangle([x, y, x + 10, y + 10], fill=colour, outline="#444444")
        else:
            draw.ellipse([x, y, x + 10, y + 10], fill=colour, outline="black")
        draw.text((x + 16, y + 5), name, fill="black", font=font, anchor="lm")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with write_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path
