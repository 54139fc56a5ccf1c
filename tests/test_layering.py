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
        "import sys, clipsan.models, clipsan.checkpoints\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
        "import transformers\n"  # still importable afterwards (the tests' equivalence checks need it)
        "import open_clip.hf_model as h\n"
        "assert h.transformers is None\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- import circles


def _runtime_imports(path) -> set[str]:
    """The clipsan modules a file imports at any depth, as executed: ``from P import m`` counts as
    importing the submodule P.m where m is one, and ``if TYPE_CHECKING:`` blocks do not count."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_inside_the_package():
    graph = {_module_name(p): _runtime_imports(p) - {_module_name(p)} for p in PACKAGE.rglob("*.py")}
    assert not _circles(graph), "modules importing each other (lazy imports count):\n" + "\n".join(" <-> ".join(c) for c in _circles(graph))


def test_the_circle_check_can_fail():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # The walker resolves `from package import module` to the module, and sees lazy imports.
    assert "clipsan.cli.scan" in _runtime_imports(PACKAGE / "cli" / "app.py")
    assert "clipsan.jobs.purify" in _runtime_imports(PACKAGE / "api.py")


# --------------------------------------------------------------------------- constants defined once

CONFIG = PACKAGE / "config"


def _literal(node):
    """A literal's value, hashable (lists as tuples), or None for anything else (dicts, names, calls)."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None
    value = tuple(value) if isinstance(value, list) else value
    try:
        hash(value)
    except TypeError:
        return None
    return value


def _label(path) -> str:
    return str(path.relative_to(REPO)) if REPO in path.parents else path.name


def _config_constants() -> dict[object, str]:
    """The config package's choice tuples and DEFAULT_* names (module-level constants), by value."""
    found = {}
    for path in sorted(CONFIG.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
                value = _literal(node.value)
                name = node.targets[0].id
                if (isinstance(value, tuple) and len(value) > 1) or (isinstance(value, str) and name.startswith("DEFAULT_")):
                    found[value] = f"{path.relative_to(REPO)}:{node.targets[0].id}"
    return found


def _docstrings(tree) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {id(n.body[0].value) for n in nodes if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def _restated(constants: dict, paths) -> list[str]:
    found = []
    for path in paths:
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if id(node) in docstrings or not isinstance(node, (ast.Tuple, ast.List, ast.Constant)):
                continue
            value = _literal(node)
            if value in constants and (not isinstance(value, str) or isinstance(node, ast.Constant)):
                found.append(f"{_label(path)}:{node.lineno} restates {constants[value]} = {value!r}")
    return found


def test_a_config_constant_is_written_once():
    constants = _config_constants()
    assert ("auto", "fp32", "bf16", "fp16") in constants and "banana" in constants  # the check reads what it should
    elsewhere = [p for p in sorted(PACKAGE.rglob("*.py")) if CONFIG not in p.parents]
    restated = _restated(constants, elsewhere)
    assert not restated, "a value the config package owns, written again:\n" + "\n".join(restated)


def test_a_constant_is_defined_in_one_module():
    defined: dict[tuple[str, object], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
                value = _literal(node.value)
                if value is not None:
                    defined.setdefault((node.targets[0].id, repr(value)), []).append(str(path.relative_to(REPO)))
    twice = {key: where for key, where in defined.items() if len(where) > 1}
    assert not twice, twice


def test_the_constant_checks_can_fail(tmp_path):
    sample = tmp_path / "options.py"
    sample.write_text('"""banana"""\nPrecision = ("auto", "fp32", "bf16", "fp16")\nTARGET = "banana"\n')
    restated = _restated(_config_constants(), [sample])
    assert len(restated) == 2, restated  # the choice tuple and the target's name; the docstring is prose
