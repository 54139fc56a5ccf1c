"""Zero-shot prompt templates: the sets ``--templates`` names (``clipsan.config.jobs.TEMPLATE_SETS``), or a file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clipsan.config.jobs import TEMPLATE_SETS
from clipsan.errors import UserError

PHOTO_TEMPLATE = "a photo of a {}."
_TEMPLATES_EXPECTED = f"expected {', '.join(TEMPLATE_SETS)}, or a text file with one template containing {{}} per line"


def load_templates(spec: str) -> list[str]:
    """Prompt templates with ``{}`` where the class name goes.

    ``openai``: the 80 OpenAI ImageNet templates; ``simple``: open_clip's 7
    SIMPLE_IMAGENET_TEMPLATES; ``photo``: just "a photo of a {}."; anything
    else is a file with one template per line (blank lines ignored).
    """
    if spec in ("openai", "simple"):
        from clipsan.openclip import open_clip

        metadata = open_clip.zero_shot_metadata
        templates = metadata.OPENAI_IMAGENET_TEMPLATES if spec == "openai" else metadata.SIMPLE_IMAGENET_TEMPLATES
        return [_render(t) for t in templates]
    if spec == "photo":
        return [PHOTO_TEMPLATE]
    return _read_template_file(Path(spec))


def _render(template: Callable[[str], str] | str) -> str:
    """open_clip stores templates as lambdas taking the class name; render them with '{}'."""
    return template if isinstance(template, str) else template("{}")


def _read_template_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: templates file not found ({_TEMPLATES_EXPECTED})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read templates ({err}); {_TEMPLATES_EXPECTED}") from None
    templates = []
    for number, line in enumerate(lines, start=1):
        template = line.strip()
        if not template:
            continue
        if "{}" not in template:
            raise UserError(f"{path}:{number}: template {template!r} has no {{}} for the class name")
        templates.append(template)
    if not templates:
        raise UserError(f"{path}: no templates ({_TEMPLATES_EXPECTED})")
    return templates


def fill(template: str, classname: str) -> str:
    # replace, not str.format: user templates may contain other braces.
    return template.replace("{}", classname)
