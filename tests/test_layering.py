"""The package's layering, read from the source (ast, not runtime): the product never imports the
command line or the lab, and nothing below the command line parses arguments."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "clipsan"
FRONT_ENDS = ("clipsan.cli", "clipsan.lab")
ARGUMENT_PARSERS = ("argparse", "typer", "click")


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count)."""
    found = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_product_never_imports_the_cli_or_the_lab():
    arrows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if _within(name, FRONT_ENDS) or name == "clipsan.__main__":
            continue
        arrows += [f"{name} -> {m}" for m in sorted(_imports(path)) if _within(m, FRONT_ENDS)]
    assert not arrows, "product modules importing a front end:\n" + "\n".join(arrows)


def test_the_lab_drives_the_product_not_the_cli():
    arrows = [f"{_module_name(p)} -> {m}" for p in sorted((PACKAGE / "lab").rglob("*.py")) for m in _imports(p) if _within(m, ("clipsan.cli",))]
    assert not arrows, arrows


def test_no_argument_parsing_below_the_cli():
    arrows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if not _within(name, ("clipsan.cli",)):
            arrows += [f"{name} -> {m}" for m in sorted(_imports(path)) if _within(m, ARGUMENT_PARSERS)]
    assert not arrows, arrows


def test_the_import_walker_sees_lazy_and_relative_imports(tmp_path):
    # The checks above can fail: the walker finds imports inside functions and resolves relative ones.
    sample = PACKAGE / "recipes" / "__init__.py"
    assert "clipsan.recipes.abd.recipe" in _imports(sample)  # imported inside recipe_classes()
    assert _within("clipsan.lab.plan", FRONT_ENDS) and not _within("clipsan.labels", FRONT_ENDS)


def test_open_clip_comes_only_through_clipsan_openclip():
    # clipsan.openclip imports it with transformers hidden; a direct import elsewhere could load transformers first.
    arrows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name != "clipsan.openclip":
            arrows += [f"{name} -> {m}" for m in sorted(_imports(path)) if _within(m, ("open_clip",))]
    assert not arrows, arrows


def test_loading_the_model_layer_does_not_import_transformers_and_leaves_it_importable():
    script = (
        "import sys, clipsan.models, clipsan.checkpoint\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
        "import transformers\n"  # still importable afterwards (the tests' equivalence checks need it)
        "import open_clip.hf_model as h\n"
        "assert h.transformers is None\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
