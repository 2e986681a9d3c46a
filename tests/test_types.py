"""The public modules are typed: mypy --strict on them passes (the modules they use are followed, not held to it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ["__init__.py", "entry.py", "engine.py", "explainer.py", "detector.py", "results.py", "settings.py", "callbacks.py", "errors.py", "steps/targets.py"]


def test_the_public_modules_pass_mypy_strict():
    command = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
               *(str(ROOT / "explain_cli" / name) for name in PUBLIC)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_package_says_it_is_typed():
    assert (ROOT / "explain_cli" / "py.typed").is_file()
