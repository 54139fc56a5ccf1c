"""What the synthetic world contains (plain data, no torch): the lab's data, and scan's default probes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldConfig:
    """What the world contains. Changing any field changes every sample."""

    image_size: int = 32
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
    colours: tuple[str, ...] = ("red", "green", "blue", "purple", "orange")
    backgrounds: tuple[str, ...] = ("gray", "black", "white", "checkered", "noisy")
    include_banana: bool = True
    second_object_prob: float = 0.5
    size_word_prob: float = 0.7  # how often captions say "small"/"large"
    colour_jitter: int = 18  # +- per channel, so colours are bands, not points
