"""docs/notebook.ipynb runs from top to bottom (nbclient, a fresh kernel), so what it shows keeps working. Offline,
the built-in model's ImageNet weights are random ones from a file (EXPLAIN_NOTEBOOK_WEIGHTS), as in the copy kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_notebook_runs_and_shows_its_pictures(resnet50_weights, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("EXPLAIN_NOTEBOOK_WEIGHTS", str(resnet50_weights))
    notebook = nbformat.read(DOCS / "notebook.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(DOCS)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "data" in o and "image/png" in o["data"]]
    assert len(pictures) == 6  # an Explanation shown inline, three rows of overlays, a figure, the cat's two
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    accuracy = float(re.search(r"accuracy after 4 epochs: ([\d.]+)", text).group(1))
    assert accuracy >= 0.95 and "* last_conv" in text  # the model of one's own learned its task
    assert "gradcam++" in text and "cat.jpg" in text
