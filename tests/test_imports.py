"""Imports go one way, along the data's path: import-linter's contracts in pyproject.toml hold (the command line over
the public API over tasks, steps, methods, the model and inputs; inputs, values, rendering and files import no
TensorFlow), and the package's top level holds only the public API and its subpackages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = {"__init__.py", "__main__.py", "entry.py", "engine.py", "explainer.py", "detector.py", "results.py", "settings.py", "callbacks.py",
          "errors.py"}


def test_the_import_contracts_hold():
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    done = subprocess.run([command, "--no-cache"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 broken" in done.stdout


def test_the_top_level_holds_the_public_api_and_subpackages():
    package = ROOT / "explain_cli"
    modules = {p.name for p in package.glob("*.py")}
    assert modules == PUBLIC
    folders = {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {"inputs", "model", "steps", "methods", "tasks", "evaluation", "render", "io", "running", "cli",
                       "data", "report_assets"}
    assert all((package / f / "__init__.py").is_file() for f in folders - {"data", "report_assets"})
