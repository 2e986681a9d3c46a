"""The pipeline without a model: batching, order, per-file errors, warnings, written files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from explain_cli.inputs import sources as inputs
from explain_cli.running import pipeline
from explain_cli.steps.compiled import BatchResult


def fake_model(calls: list[int]):
    """A stand-in compute step: 2 classes, image i's probabilities favour class (mean pixel > 127)."""

    def compute(batch: np.ndarray, sources: list) -> BatchResult:
        calls.append(len(batch))
        bright = batch.reshape(len(batch), -1).mean(axis=1) > 127
        probabilities = np.where(bright[:, None], [[0.2, 0.8]], [[0.8, 0.2]])
        classes = probabilities.argmax(axis=1)[:, None]
        maps = np.zeros((len(batch), 1, 2, 2), np.float32)
        maps[bright, 0, 0, 0] = 3.0  # dark images get an all-zero map
        return BatchResult(probabilities, classes, probabilities.max(axis=1)[:, None], maps)

    return compute


def test_batches_keep_order_and_isolate_bad_files(tmp_path: Path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (10 + i, 8), (255, 255, 255) if i % 2 else (0, 0, 0)).save(folder / f"{i}.png")
    (folder / "2.png").write_text("broken")
    sources = inputs.discover([str(folder)], io.StringIO())
    options = pipeline.RenderOptions(out_dir=tmp_path / "out", method="gradcam", layer="l", save_heatmap=True)
    calls: list[int] = []
    finish = pipeline.explanations(("dark", "bright"), 2, options)

    results = list(pipeline.Run(sources, fake_model(calls), finish, size=(4, 4, 3), batch_size=2))

    assert [r.source.stem.as_posix() for r in results] == ["0", "1", "2", "3", "4"]
    assert calls == [2, 1, 1]  # batches of two; the broken file leaves its batch one short
    assert results[2].error == f"{folder / '2.png'}: not an image (Pillow cannot identify it)"
    assert [r.explanations[0].label for i, r in enumerate(results) if i != 2] == ["dark", "bright", "bright", "dark"]
    assert results[0].warnings == [f"warning: {folder / '0.png'}: the gradcam map for class 0 (dark) is all zero"]
    assert results[1].warnings == []
    bright = results[1].explanations[0]
    assert bright.overlay == "1.gradcam.1-bright.jpg" and bright.rank == 1 and bright.probability == 0.8
    np.testing.assert_array_equal(np.load(tmp_path / "out" / bright.heatmap_file), [[1, 0], [0, 0]])
    assert Image.open(tmp_path / "out" / bright.overlay).size == (11, 8)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{i}.gradcam.{c}.{ext}" for i, c in ((0, "0-dark"), (1, "1-bright"), (3, "1-bright"), (4, "0-dark"))
        for ext in ("jpg", "npy")
    )
