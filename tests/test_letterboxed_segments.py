"""A letterboxed segmentation is read on the picture, not on the grey around it: each class's share of the pixels and
its mean probability count the picture's part of the input alone, for predict and for every method's explanations,
against numpy over the model's own output on a letterbox made here by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from explain_cli import Explainer
from tests.synthetic import make_colour_blobs

SIZE = 64  # the trained segmenter's input


@pytest.fixture(scope="module")
def wide():
    """A picture twice as wide as high: letterboxed, it fills the middle half of the input's rows."""
    scene = make_colour_blobs(np.random.default_rng(4), size=SIZE)
    return np.concatenate([scene.image, make_colour_blobs(np.random.default_rng(5), size=SIZE).image], axis=1)


def by_hand(keras, model_path, picture):
    """numpy: the picture scaled to 64 × 32, pasted on grey 114 at rows 16-47; the model's per-pixel probabilities
    there; each class's share of those rows and its mean probability where it is the most probable."""
    canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
    canvas[16:48] = np.asarray(Image.fromarray(picture).resize((SIZE, SIZE // 2), Image.Resampling.BILINEAR))
    model = keras.models.load_model(model_path, compile=False)
    probabilities = np.asarray(model(canvas[None].astype(np.float32)))[0, 16:48]  # the picture's rows alone
    classes = probabilities.argmax(-1)
    shares = np.array([(classes == c).mean() for c in range(probabilities.shape[-1])])
    means = np.array([probabilities[..., c][classes == c].mean() if (classes == c).any() else 0.0
                      for c in range(probabilities.shape[-1])])
    return shares, means


def test_predict_counts_the_pictures_pixels_alone(keras, segmenter_model, wide):
    shares, means = by_hand(keras, segmenter_model, wide)
    made = Explainer(segmenter_model, resize="letterbox", preprocess="none", precision="fp32")
    (found,) = made.predict([wide])
    np.testing.assert_allclose(found.probabilities, shares, atol=1e-6)
    for region in found.predictions:
        assert region.probability == pytest.approx(shares[region.class_index], abs=1e-6)
        assert region.mean_probability == pytest.approx(means[region.class_index], abs=1e-4)
    stretched = Explainer(segmenter_model, preprocess="none", precision="fp32").predict([wide])[0]
    assert not np.allclose(stretched.probabilities, shares, atol=1e-3)  # the test tells the two apart


@pytest.mark.parametrize("method", ["gradcam", "rise"])
def test_explanations_read_the_pictures_pixels_alone(keras, segmenter_model, wide, method):
    shares, means = by_hand(keras, segmenter_model, wide)
    made = Explainer(segmenter_model, resize="letterbox", preprocess="none", precision="fp32", method=method,
                     masks=40, seed=1)
    found = made.explain([wide], top_k=2)
    assert [e.class_index for e in found] == list(np.argsort(-shares, kind="stable")[:2])
    for e in found:
        assert e.share == pytest.approx(shares[e.class_index], abs=1e-6)
        assert e.mean_probability == pytest.approx(means[e.class_index], abs=1e-4)
        assert e.map.shape[0] * 2 == pytest.approx(e.map.shape[1], abs=2)  # cut to the picture's part


def test_sanity_compares_the_maps_on_the_picture_alone(tmp_path):
    """--sanity on a letterboxed picture: the rank correlation of the trained map with each stage's, and the figure of
    them, take the picture's part of the input alone; hand-made maps whose grey rows disagree and picture rows agree
    give 1.0, where the whole input's would not."""
    from pathlib import Path, PurePosixPath
    from types import SimpleNamespace

    from explain_cli.evaluation import evaluate, metrics
    from explain_cli.inputs.fitting import Canvas
    from explain_cli.inputs.sources import Source

    rng = np.random.default_rng(0)
    picture_rows = rng.random((32, 64))
    trained, randomised = np.zeros((64, 64)), np.zeros((64, 64))
    trained[16:48], randomised[16:48] = picture_rows, picture_rows * 2  # the same ranks on the picture
    trained[:16], randomised[:16] = rng.random((16, 64)), -rng.random((16, 64))  # none alike on the grey
    source = Source(Path("wide.png"), "wide.png", PurePosixPath("wide"))
    batch = evaluate.EvaluationBatch(np.ones((1, 2)), np.array([[1]]), {"gradcam": np.zeros((1, 1, 64, 64))},
                                     stage_maps={"gradcam": np.stack([trained, randomised])[None, None]})
    sanity = evaluate.Sanity(SimpleNamespace(stages=[(1, "conv")]), {}, frozenset({source}), tmp_path)
    original = np.zeros((64, 128, 3), np.uint8)
    (record,) = evaluate._sanity_records(source, original, 0, batch, ["a", "b"], sanity,
                                         evaluate.Settings(("gradcam",)), Canvas("letterbox", 64, 64))
    assert record["spearman"] == pytest.approx(1.0)
    assert metrics.spearman(trained, randomised) < 0.9  # what the whole input gives
    assert (tmp_path / record["figure"]).is_file()
