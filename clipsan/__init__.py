"""clipsan: scan, purify and evaluate CLIP checkpoints for backdoors."""

__version__ = "0.1.0"
