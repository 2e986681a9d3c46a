"""`import explain_cli` and `explain --help` never load TensorFlow (checked in a fresh interpreter)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from PIL import Image

CHECK = """
import sys
{body}
heavy = sorted(m for m in ("tensorflow", "keras", "matplotlib", "numpy", "PIL", "rich", "openvino", "onnxruntime")
               if m in sys.modules)
print("loaded:" + ",".join(heavy))
"""


def _loaded(body: str) -> str:
    """The heavy modules that `body` loaded, as "loaded:a,b"."""
    done = subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_import_loads_no_tensorflow():
    assert _loaded("import explain_cli, explain_cli.cli.main") == "loaded:"  # help stays instant: Click alone
    rendering = _loaded("import explain_cli.render.heatmaps, explain_cli.io.files, explain_cli.explainer")
    assert rendering == "loaded:PIL,numpy"  # the library's names: numpy and Pillow, never TensorFlow


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["gradcam", "--help"], ["predict", "--help"],
                                  ["layers", "--help"], ["evaluate", "--help"], ["detect", "--help"]])
def test_help_loads_no_tensorflow(argv):
    body = f"""
from explain_cli.cli.main import main
sys.argv = ["explain", *{argv!r}]
try:
    main()
except SystemExit as done:
    assert done.code == 0, done.code
"""
    assert _loaded(body) == "loaded:"  # Click and the option groups alone: no TensorFlow, numpy, Pillow or rich


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "explain_cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "gradcam" in done.stdout and "predict" in done.stdout


def test_keras_runs_on_tensorflow_whatever_keras_json_says(tmp_path):
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    body = """
from explain_cli.model.backend import load_tensorflow
tf, keras = load_tensorflow()
assert keras.backend.backend() == "tensorflow", keras.backend.backend()
"""
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True,
                          timeout=180, env=env)
    assert done.returncode == 0, done.stderr


def test_a_real_run_keeps_stdout_for_data_and_stderr_free_of_tensorflow_noise(tiny_model, photo_tree, tmp_path):
    # A truncated TIFF makes Pillow warn as well as fail: the user sees the one error line only.
    tiff = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tiff, format="TIFF")
    (photo_tree / "cut.tif").write_bytes(tiff.getvalue()[:50])
    done = subprocess.run(
        [sys.executable, "-m", "explain_cli", "gradcam", str(photo_tree), "--model", str(tiny_model),
         "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert len(rows) == 9 and all(len(row) == 5 for row in rows)
    cut = photo_tree / "cut.tif"
    assert done.stderr.splitlines() == [
        "tiny.keras: gradcam at layer conv3 (default)",
        f"error: {cut}: not an image (Pillow cannot identify it)",
        f"3 of 4 images done, 3 explanations written to {tmp_path / 'out'}; 1 failed: {cut}: not an image "
        "(Pillow cannot identify it)",
    ]


def test_rendering_a_jet_overlay_loads_no_matplotlib():
    body = """
import numpy as np
from explain_cli.render import heatmaps as render
render.overlay(np.zeros((4, 4, 3), np.uint8), np.ones((2, 2), np.float32), "jet")
assert render.is_colormap("jet")
"""
    assert _loaded(body) == "loaded:PIL,numpy"  # no matplotlib (and no TensorFlow)


def test_the_command_line_imports_keras_without_its_optional_integrations_which_import_later_as_ever():
    body = """
from explain_cli.model import backend
backend.quiet_process()
tf, keras = backend.load_tensorflow()
skipped = [m for m in ("pandas", "sklearn", "matplotlib.pyplot") if m in sys.modules]
assert not skipped, skipped
import matplotlib.pyplot  # explain's own figures import it when they are drawn
print("later:", matplotlib.pyplot.__name__)
"""
    done = subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "later: matplotlib.pyplot" in done.stdout


def test_a_module_refused_for_a_while_is_absent_then_imports():
    from explain_cli.model.backend import without

    sys.modules.pop("tomllib", None)
    with without(("tomllib",)):
        with pytest.raises(ImportError, match="tomllib is not imported by explain here"):
            import tomllib  # noqa: F401
    import tomllib

    assert tomllib.loads("a = 1") == {"a": 1}
