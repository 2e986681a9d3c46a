"""Why two images are alike to an embedding model: every map of a likeness, cos(e(x), r) with r held fixed, equals
an independent computation (a full tape for gradients, numpy over the model's own outputs for occlusion and RISE);
`explain similar` writes a map per image and prints the cosine; references of the wrong length are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadArgument, Explainer
from explain_cli.cli.main import cli
from explain_cli.methods.perturbation import rise_masks

SIZE = 32
WIDTH = 12  # the embedding's length


def embedder(keras, rescaling: bool):
    """A siamese branch: convolutions, global pooling, a Dense embedding with no activation (with or without a
    Rescaling layer inside: a user's model fed 0-255 as it is)."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs) if rescaling else inputs
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(WIDTH, name="embedding")(x))


def scene(seed: int) -> np.ndarray:
    """A coloured square on grey clutter: two scenes of different seeds embed apart."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 160, (SIZE, SIZE, 1), dtype=np.uint8).repeat(3, axis=2)
    top, left = rng.integers(0, SIZE - 10, 2)
    image[top:top + 10, left:left + 10] = rng.integers(0, 255, 3, dtype=np.uint8)
    return image


def cosine(e: np.ndarray, r: np.ndarray) -> np.ndarray:
    """cos(e, r); an embedding of zeros (a black image through a network without biases) is like nothing: 0."""
    return (e @ r) / (np.maximum(np.linalg.norm(e, axis=-1), 1e-12) * np.linalg.norm(r))


def embed(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(np.asarray(images, np.float32)))


def tape_maps(keras, model, image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM at `features` and the gradient at the input of cos(e(x), r), by a full tape through the model."""
    import tensorflow as tf

    probe = keras.Model(model.inputs, [model.get_layer("features").output, model.output])
    x = tf.constant(image[None].astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        features, e = probe(x)
        score = tf.reduce_sum(tf.math.l2_normalize(e, axis=1) * tf.math.l2_normalize(reference[None], axis=1))
    grads = tape.gradient(score, features)[0].numpy()
    gradcam = np.maximum((features[0].numpy() * grads.mean(axis=(0, 1))).sum(-1), 0)
    return gradcam, np.abs(tape.gradient(score, x)[0].numpy()).max(axis=-1)


def r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.mark.parametrize("rescaling", [True, False], ids=["rescaling-inside", "no-rescaling"])
def test_similar_explains_each_image_by_its_likeness_to_the_other(keras, rescaling):
    model = embedder(keras, rescaling)
    a, b = scene(1), scene(2)
    e_a, e_b = embed(model, [a, b])
    made = Explainer(model, layer="features", precision="fp32")
    alike = made.similar(a, b)
    assert alike.similarity == pytest.approx(float(cosine(e_a, e_b)), abs=1e-5)
    assert alike.a.target.kind == "similarity" and alike.a.label == "b" and alike.b.label == "a"
    assert alike.a.target_score == pytest.approx(alike.similarity, abs=1e-6)
    assert r(alike.a.map, tape_maps(keras, model, a, e_b)[0]) >= 0.999
    assert r(alike.b.map, tape_maps(keras, model, b, e_a)[0]) >= 0.999
    assert np.allclose(made.embed([a, b]), [e_a, e_b], atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "vanilla"])
def test_each_reference_vector_is_a_row_of_its_own(keras, method):
    model = embedder(keras, True)
    images = np.stack([scene(3), scene(4)])
    references = embed(model, [scene(5), scene(6), scene(7)])
    made = Explainer(model, layer="features", method=method, precision="fp32")
    found = made.explain(images, similar_to=references)
    assert [(e.source, e.class_index) for e in found] == [(i, j) for i in range(2) for j in range(3)]
    for e in found:
        gradcam, pixels = tape_maps(keras, model, images[e.source], references[e.class_index])
        assert e.probability == pytest.approx(float(cosine(embed(model, images[e.source][None])[0],
                                                           references[e.class_index])), abs=1e-5)
        assert e.label == f"reference {e.class_index}"
        assert r(e.map, gradcam if method == "gradcam" else pixels) >= 0.999
    ranked = [e.rank for e in found if e.source == 0]
    assert sorted(ranked) == [1, 2, 3]


def test_occlusion_of_a_likeness_is_the_cosine_lost_under_each_patch(keras):
    model = embedder(keras, True)
    image, reference = scene(8), embed(model, [scene(9)])[0]
    made = Explainer(model, method="occlusion", window=8, stride=8, precision="fp32")
    (found,) = made.explain([image], similar_to=reference)
    whole = cosine(embed(model, image[None])[0], reference)
    expected = np.zeros((SIZE, SIZE))
    for top in range(0, SIZE, 8):
        for left in range(0, SIZE, 8):
            hidden = image.astype(np.float32)
            hidden[top:top + 8, left:left + 8] = 128.0
            expected[top:top + 8, left:left + 8] = whole - cosine(embed(model, hidden[None])[0], reference)
    assert np.allclose(found.map, expected, atol=1e-4)


def test_rise_of_a_likeness_weighs_each_mask_by_its_cosine(keras):
    model = embedder(keras, True)
    image, reference = scene(10), embed(model, [scene(11)])[0]
    made = Explainer(model, method="rise", masks=64, cells=4, keep=0.5, seed=3, precision="fp32")
    (found,) = made.explain([image], similar_to=reference)
    masks = rise_masks(64, 4, 0.5, 3, SIZE, SIZE).chunk(0, 64)
    hidden = 128.0 + (image[None].astype(np.float32) - 128.0) * masks[..., None]
    weights = cosine(embed(model, hidden), reference)
    expected = np.tensordot(weights, masks, axes=1) / (64 * 0.5)
    assert np.allclose(found.map, expected - expected.min(), atol=1e-4)


def test_references_that_do_not_fit_are_refused(keras):
    made = Explainer(embedder(keras, True), precision="fp32")
    with pytest.raises(BadArgument, match="reference vectors of 5 values; the model's output has 12"):
        made.explain([scene(1)], similar_to=np.ones(5))
    with pytest.raises(BadArgument, match="give no classes, top_k or region with it"):
        made.explain([scene(1)], classes=0, similar_to=np.ones(WIDTH))
    with pytest.raises(BadArgument, match="no reference vector was given for the image 1"):
        made.explain([scene(1), scene(2)], similar_to={0: np.ones(WIDTH)})


@pytest.fixture(scope="module")
def pair(tmp_path_factory, keras):
    folder = tmp_path_factory.mktemp("similar")
    embedder(keras, True).save(folder / "embedder.keras")
    for name, seed in (("a.png", 1), ("b.png", 2)):
        Image.fromarray(scene(seed)).save(folder / name)
    return folder


def test_the_command_line_explains_a_pair(pair):
    out = pair / "out"
    result = CliRunner().invoke(cli, ["similar", str(pair / "a.png"), str(pair / "b.png"), "--model",
                                      str(pair / "embedder.keras"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[1] for row in rows] == [str(pair / "b.png"), str(pair / "a.png")]
    assert rows[0][2] == rows[1][2]  # the same cosine, seen from either side
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(rec["target"], rec["method"], rec["layer"]) for rec in records] == [("similarity", "gradcam",
                                                                                  "features")] * 2
    assert records[0]["similarity"] == pytest.approx(float(rows[0][2]), abs=1e-6)
    assert all((out / rec["overlay"]).is_file() for rec in records)


def test_the_command_line_compares_with_vectors_given(pair, keras):
    model = keras.models.load_model(pair / "embedder.keras")
    vectors = embed(model, [scene(5), scene(6)])
    np.savetxt(pair / "prototypes.txt", vectors, delimiter=",")
    out = pair / "vectors"
    result = CliRunner().invoke(cli, ["similar", str(pair / "a.png"), "--to", str(pair / "prototypes.txt"),
                                      "--model", str(pair / "embedder.keras"), "--method", "occlusion", "-o", str(out),
                                      "--precision", "fp32", "--json"])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(text) for text in result.stdout.splitlines()]
    e = embed(model, [np.asarray(Image.open(pair / "a.png"))])[0]
    assert [p["reference"] for p in line["predictions"]] == ["prototypes.txt#0", "prototypes.txt#1"]
    assert [p["similarity"] for p in line["predictions"]] == pytest.approx(
        [float(cosine(e, v)) for v in vectors], abs=1e-5)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("arguments, message", [
    (["a.png"], "explain similar compares two images, A and B (1 given)"),
    (["a.png", "--to", "short.npy"], "--to: reference vectors of 3 values; the model's output has 12"),
])
def test_the_command_line_says_what_does_not_fit_in_one_line(pair, arguments, message):
    np.save(pair / "short.npy", np.ones(3, np.float32))
    result = CliRunner().invoke(cli, ["similar", *[str(pair / a) if a.endswith((".png", ".npy")) else a
                                                   for a in arguments], "--model", str(pair / "embedder.keras"),
                                      "-o", str(pair / "refused")])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (pair / "refused").exists()


def test_evaluate_measures_the_likeness_lost_and_gained(keras):
    from explain_cli.evaluation import metrics
    from explain_cli.render import heatmaps as render

    model = embedder(keras, True)
    image, reference = scene(12), embed(model, [scene(13)])[0]
    made = Explainer(model, layer="features", precision="fp32")
    evaluation = made.evaluate([image], methods=("gradcam", "random"), similar_to=reference, steps=8)
    record = next(rec for rec in evaluation.records if rec["method"] == "gradcam")
    whole = float(cosine(embed(model, image[None])[0], reference))
    assert record["label"] == "reference 0" and record["deletion_curve"][0] == pytest.approx(whole, abs=1e-5)
    (explained,) = made.explain([image], similar_to=reference)
    saliency = render.upsample(render.normalise(explained.map), SIZE, SIZE)

    def forward(batch: np.ndarray) -> np.ndarray:  # the model itself, the cosine in numpy
        return cosine(embed(model, batch), reference)[:, None]

    by_hand = metrics.faithfulness(forward, image, metrics.gaussian_blur(image, 5.0), saliency, 0, whole, 8, 32)
    assert record["deletion_auc"] == pytest.approx(by_hand.deletion_auc, abs=1e-4)
    assert record["insertion_auc"] == pytest.approx(by_hand.insertion_auc, abs=1e-4)
    assert {s.method for s in evaluation.summaries} == {"gradcam", "random"}


def test_the_command_line_measures_a_likeness(pair, keras):
    model = keras.models.load_model(pair / "embedder.keras")
    np.save(pair / "prototype.npy", embed(model, [scene(5)])[0])
    out = pair / "measured"
    result = CliRunner().invoke(cli, ["evaluate", str(pair / "a.png"), str(pair / "b.png"), "--to",
                                      str(pair / "prototype.npy"), "--model", str(pair / "embedder.keras"),
                                      "--methods", "gradcam,random", "--steps", "4", "-o", str(out), "--precision",
                                      "fp32"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "evaluation.jsonl").read_text().splitlines()]
    assert sorted((rec["image"].rsplit("/", 1)[-1], rec["method"]) for rec in records) == [
        ("a.png", "gradcam"), ("a.png", "random"), ("b.png", "gradcam"), ("b.png", "random")]
    e = embed(model, [np.asarray(Image.open(pair / "a.png"))])[0]
    first = next(rec for rec in records if rec["image"].endswith("a.png"))
    assert first["label"] == "prototype.npy"
    assert first["deletion_curve"][0] == pytest.approx(float(cosine(e, np.load(pair / "prototype.npy"))), abs=1e-5)
    assert "gradcam" in result.stdout and "random" in result.stdout


def test_a_pair_given_as_written_relative_paths(pair, monkeypatch):
    """Each image is looked up by the name it was given as ("./a.png"), not by its normalised path."""
    monkeypatch.chdir(pair)
    result = CliRunner().invoke(cli, ["similar", "./a.png", "./b.png", "--model", "embedder.keras", "-o", "relative"])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[:2] for line in result.stdout.splitlines()] == [["./a.png", "./b.png"],
                                                                             ["./b.png", "./a.png"]]
