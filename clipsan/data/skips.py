"""What a dataset could not use, counted by reason ('missing_file': 2, ...): reported, never a crash."""

from __future__ import annotations

MISSING_FILE = "missing_file"
OUTSIDE_ROOT = "outside_root"  # a file whose real path is outside the data folder (clipsan.data.paths)


def count(skipped: dict[str, int], reason: str, n: int = 1) -> None:
    skipped[reason] = skipped.get(reason, 0) + n


def format_counts(counts: dict[str, int], nonzero_only: bool = False) -> str:
    """{'missing_file': 2, 'empty_caption': 1} -> '2 missing files, 1 empty caption'."""
    return ", ".join(f"{n:,} {reason.replace('_', ' ')}{'' if n == 1 else 's'}" for reason, n in counts.items() if n or not nonzero_only)
