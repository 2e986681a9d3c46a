"""`import explain_cli` and `explain --help` never load TensorFlow (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
{body}
heavy = sorted(m for m in ("tensorflow", "keras", "matplotlib") if m in sys.modules)
print("loaded:", ",".join(heavy))
"""


def _loaded(body: str) -> str:
    done = subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_import_loads_no_tensorflow():
    assert _loaded("import explain_cli, explain_cli.cli, explain_cli.render, explain_cli.output") == "loaded:"


@pytest.mark.parametrize("argv", [["--help"], ["gradcam", "--help"], ["predict", "--help"], ["layers", "--help"]])
def test_help_loads_no_tensorflow(argv):
    body = f"""
from explain_cli.cli import main
sys.argv = ["explain", *{argv!r}]
try:
    main()
except SystemExit as done:
    assert done.code == 0, done.code
"""
    assert _loaded(body) == "loaded:"


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "explain_cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "gradcam" in done.stdout and "predict" in done.stdout
