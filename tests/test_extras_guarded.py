"""The README's set-up installs only its own extras; every test that needs another one (keras-hub, Ray, ONNX, volumes,
video, int8) must skip
without it, not fail. Read from the test modules' source: an import of an optional extra's package is guarded when
the module, the function, a fixture it takes or every function that calls it asks for that extra first
(`pytest.importorskip`, a skip on `find_spec`, a `skipif` naming it)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

TESTS = Path(__file__).parent
ROOT = TESTS.parent
# The packages of each extra the README's set-up does not install.
EXTRAS = {"hub": {"keras_hub"}, "ray": {"ray"}, "onnx": {"onnxruntime", "onnx", "tf2onnx"},
          "volumes": {"nibabel", "pydicom"}, "video": {"av"}, "int8": {"nncf"}}


def readme_extras() -> set[str]:
    """The extras the README's first set-up command installs."""
    found = re.search(r"pip install -e '\.\[([a-z,]+)\]'", (ROOT / "README.md").read_text())
    assert found, "the README's set-up command installs the project with its extras"
    return set(found.group(1).split(","))


def extra_of(module: str) -> str | None:
    top = module.split(".")[0]
    return next((extra for extra, packages in EXTRAS.items() if top in packages), None)


def named(node: ast.AST) -> set[str]:
    """The optional extras a piece of code names in a string ("keras_hub" in importorskip, find_spec, installed)."""
    return {extra for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            for extra in [extra_of(n.value)] if extra is not None}


def imported(node: ast.AST) -> set[str]:
    modules = [alias.name for n in ast.walk(node) if isinstance(n, ast.Import) for alias in n.names]
    modules += [n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
    return {extra for m in modules for extra in [extra_of(m)] if extra is not None}


def functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def unguarded(path: Path, fixtures: dict[str, set[str]]) -> list[str]:
    """Where `path` imports an optional extra's package with nothing asking for that extra first."""
    tree = ast.parse(path.read_text())
    top_level = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    module_guards = set().union(*(named(n) for n in top_level)) if top_level else set()
    defined = functions(tree)
    uses = {name: {n.id for n in ast.walk(f) if isinstance(n, ast.Name)} for name, f in defined.items()}
    # a helper held in a module-level table (HUB = {"x": (_make_x, ...)}) is called by whoever reads the table
    for n in top_level:
        if isinstance(n, ast.Assign):
            held = {m.id for m in ast.walk(n.value) if isinstance(m, ast.Name)} & set(defined)
            targets = {t.id for t in n.targets if isinstance(t, ast.Name)}
            for name in uses:
                if uses[name] & targets:
                    uses[name] |= held
    callers = {name: [c for c in defined if c != name and name in uses[c]] for name in defined}
    guards = {name: named(f) | module_guards for name, f in defined.items()}
    changed = True
    while changed:  # fixtures taken, and the callers of a helper, until nothing changes
        before = {name: set(g) for name, g in guards.items()}
        for name, f in defined.items():
            for argument in f.args.args:
                guards[name] |= fixtures.get(argument.arg, set()) | guards.get(argument.arg, set())
            if callers[name] and not name.startswith("test_"):
                guards[name] |= set.intersection(*(guards[c] for c in callers[name]))
        changed = guards != before
    problems = [f"{path.name}: module-level import of {extra}" for n in top_level
                for extra in imported(n) - module_guards]
    problems += [f"{path.name}::{name} imports the {extra} extra unguarded" for name, f in defined.items()
                 for extra in imported(f) - guards[name]]
    return problems


def fixture_guards() -> dict[str, set[str]]:
    """conftest.py's fixtures and the extras they ask for."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    return {name: named(f) for name, f in functions(tree).items()}


def test_the_extras_the_readme_leaves_out_are_the_ones_checked():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert set(EXTRAS) == declared - readme_extras() - {"test"}


def test_no_test_imports_an_optional_extra_unguarded():
    fixtures = fixture_guards()
    problems = [p for path in sorted(TESTS.glob("*.py")) for p in unguarded(path, fixtures)]
    assert problems == []


def test_the_check_finds_an_unguarded_import(tmp_path):
    """The check itself, on the two shapes that reached users: an import inside a test with no guard, and one whose
    guard is for another extra."""
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\n"
        "def test_a(keras):\n    import keras_hub\n\n"
        "def test_b():\n    pytest.importorskip('ray')\n    import onnxruntime\n\n"
        "def test_c():\n    pytest.importorskip('keras_hub')\n    from keras_hub import layers\n\n"
        "@pytest.fixture\ndef hub():\n    return pytest.importorskip('keras_hub')\n\n"
        "def helper():\n    import keras_hub\n\n"
        "def test_d(hub):\n    helper()\n")
    assert unguarded(tmp_path / "test_x.py", {}) == ["test_x.py::test_a imports the hub extra unguarded",
                                                     "test_x.py::test_b imports the onnx extra unguarded"]
