"""Models of several inputs: a picture and a vector, and two pictures (a change detector). Each picture input is
explained while the others are held as each example gives them; maps equal a full tape's at a layer of one branch and
at one after the inputs merge; the vector's gradient × input equals the tape's; RISE equals numpy over the model's own
outputs; a table of examples runs from the command line, a bad row failing alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadArgument, Explainer
from explain_cli.cli.main import cli
from explain_cli.methods.perturbation import rise_masks

SIZE = 24
FEATURES = 5


def picture_and_vector(keras):
    """An image branch and a vector branch joined after global pooling, ending in a softmax layer of its own."""
    keras.utils.set_random_seed(11)
    image = keras.Input((SIZE, SIZE, 3), name="image")
    meta = keras.Input((FEATURES,), name="meta")
    x = keras.layers.Rescaling(1 / 255.0)(image)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    v = keras.layers.Dense(6, activation="tanh", name="meta_dense")(meta)
    logits = keras.layers.Dense(3, name="logits")(keras.layers.Concatenate()([x, v]))
    return keras.Model([image, meta], keras.layers.Softmax()(logits))


def change_detector(keras):
    """Two pictures, each through its own convolution, merged as feature maps (the map there is of both)."""
    keras.utils.set_random_seed(12)
    before = keras.Input((SIZE, SIZE, 3), name="before")
    after = keras.Input((SIZE, SIZE, 3), name="after")
    b = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="before_conv")(
        keras.layers.Rescaling(1 / 255.0)(before))
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="after_conv")(
        keras.layers.Rescaling(1 / 255.0)(after))
    fused = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="fused")(
        keras.layers.Concatenate()([b, a]))
    logits = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(fused))
    return keras.Model([before, after], keras.layers.Softmax()(logits))


def pictures(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, SIZE, SIZE, 3), dtype=np.uint8)


def vectors(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, FEATURES)).astype(np.float32)


def tape(keras, model, given: list[np.ndarray], layer: str, class_index: int, watched: int | None = None):
    """Grad-CAM at `layer` of the logit, by a full tape through the whole model fed every input; and with `watched`,
    the gradient × input of that input."""
    import tensorflow as tf

    probe = keras.Model(model.inputs, [model.get_layer(layer).output, model.get_layer("logits").output])
    tensors = [tf.constant(g[None].astype(np.float32)) for g in given]
    with tf.GradientTape(persistent=True) as t:
        for tensor in tensors:
            t.watch(tensor)
        features, logits = probe(tensors)
        score = logits[0, class_index]
    grads = t.gradient(score, features)[0].numpy()
    gradcam = np.maximum((features[0].numpy() * grads.mean(axis=(0, 1))).sum(-1), 0)
    if watched is None:
        return gradcam
    return gradcam, (t.gradient(score, tensors[watched]) * tensors[watched])[0].numpy()


def r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_a_picture_is_explained_with_its_vector_held_as_given(keras):
    model = picture_and_vector(keras)
    images, metas = pictures(1, 3), vectors(2, 3)
    made = Explainer(model, precision="fp32")
    assert (made.explained_input, made.layer, made.picture_inputs()) == ("image", "features", ["image"])
    predicted = made.predict({"image": images, "meta": metas})
    expected = np.asarray(model([images.astype(np.float32), metas]))
    assert np.allclose([p.probabilities for p in predicted], expected, atol=1e-5)
    found = made.explain([{"image": image, "meta": meta} for image, meta in zip(images, metas)])
    for e, image, meta in zip(found, images, metas):
        gradcam, attribution = tape(keras, model, [image, meta], "features", e.class_index, watched=1)
        assert e.input == "image" and r(e.map, gradcam) >= 0.999
        assert np.allclose(e.attributions["meta"], attribution, atol=1e-5)
        assert e.probability == pytest.approx(float(expected[e.source, e.class_index]), abs=1e-5)


def test_pixel_gradients_and_rise_hold_the_vector_too(keras):
    import tensorflow as tf

    model = picture_and_vector(keras)
    image, meta = pictures(3, 1)[0], vectors(4, 1)[0]
    (vanilla,) = Explainer(model, method="vanilla", precision="fp32").explain({"image": [image], "meta": [meta]})
    x = tf.constant(image[None].astype(np.float32))
    with tf.GradientTape() as t:
        t.watch(x)
        score = keras.Model(model.inputs, model.get_layer("logits").output)([x, tf.constant(meta[None])])[
            0, vanilla.class_index]
    assert r(vanilla.map, np.abs(t.gradient(score, x)[0].numpy()).max(-1)) >= 0.999
    (rise,) = Explainer(model, method="rise", masks=48, cells=4, seed=5, precision="fp32").explain(
        {"image": [image], "meta": [meta]})
    masks = rise_masks(48, 4, 0.5, 5, SIZE, SIZE).chunk(0, 48)
    hidden = 128.0 + (image[None].astype(np.float32) - 128.0) * masks[..., None]
    scores = np.asarray(model([hidden, np.repeat(meta[None], 48, axis=0)]))[:, rise.class_index]
    expected = np.tensordot(scores, masks, axes=1) / (48 * 0.5)
    assert np.allclose(rise.map, expected - expected.min(), atol=1e-4)


@pytest.mark.parametrize("explained, layer", [("after", "after_conv"), ("after", "fused"), ("before", "fused")])
def test_each_picture_of_a_change_detector_at_its_branch_and_after_the_merge(keras, explained, layer):
    model = change_detector(keras)
    before, after = pictures(5, 2), pictures(6, 2)
    made = Explainer(model, input_name=explained, layer=layer, precision="fp32")
    found = made.explain({"before": before, "after": after})
    for e in found:
        given = [before[e.source], after[e.source]]
        assert e.input == explained and r(e.map, tape(keras, model, given, layer, e.class_index)) >= 0.999
        assert e.map.shape == ((SIZE // 2, SIZE // 2) if layer == "fused" else (SIZE, SIZE))
        assert e.attributions is None  # the other input is a picture: explained on its own


def test_examples_that_do_not_fit_the_model_are_refused(keras):
    made = Explainer(picture_and_vector(keras), precision="fp32")
    with pytest.raises(BadArgument, match=r"takes several inputs \(image, meta\): give a mapping"):
        made.explain(pictures(1, 2))
    with pytest.raises(BadArgument, match="no values for the input meta"):
        made.explain({"image": pictures(1, 2)})
    with pytest.raises(BadArgument, match="unknown input 'left'; the model's inputs: image, meta"):
        Explainer(picture_and_vector(keras), input_name="left")


@pytest.fixture(scope="module")
def table(tmp_path_factory, keras):
    """A picture-and-vector model and a CSV of three examples, the third's vector one value short."""
    folder = tmp_path_factory.mktemp("several")
    picture_and_vector(keras).save(folder / "two.keras")
    rows = ["image,meta"]
    for i, (image, meta) in enumerate(zip(pictures(7, 3), vectors(8, 3))):
        Image.fromarray(image).save(folder / f"p{i}.png")
        values = meta if i < 2 else meta[:-1]
        rows.append(f"p{i}.png,\"{' '.join(f'{v:.6f}' for v in values)}\"")
    (folder / "examples.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_the_command_line_reads_a_table_of_examples(table, keras):
    out = table / "out"
    result = CliRunner().invoke(cli, ["gradcam", "--inputs", str(table / "examples.csv"), "--model",
                                      str(table / "two.keras"), "-o", str(out), "--precision", "fp32"])
    assert result.exit_code == 1  # the third example fails alone
    assert f"error: {table / 'p2.png'}: input meta: 4 values of shape (4,); the model takes (5,)" in result.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [rec["input"] for rec in records] == ["image", "image"]
    model = keras.models.load_model(table / "two.keras")
    for i, rec in enumerate(records):
        image = np.asarray(Image.open(table / f"p{i}.png"))
        meta = vectors(8, 3)[i]
        _, attribution = tape(keras, model, [image, meta], "features", rec["class_index"], watched=1)
        assert np.allclose(rec["attributions"]["meta"], attribution, atol=1e-4)
        assert (out / rec["overlay"]).is_file() and rec["overlay"].startswith(f"p{i}.row{i}.gradcam.")
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(lines) == 2 * (3 + 1)  # two examples: their top three classes, and the vector's attribution
    attributed = [line for line in lines if line[1] == "attribution"]
    assert [line[2] for line in attributed] == ["meta", "meta"]
    assert np.allclose([float(v) for v in attributed[0][5].split(",")], records[0]["attributions"]["meta"],
                       atol=1e-5)


def test_a_table_without_an_inputs_column_is_one_line(table):
    (table / "short.csv").write_text("image\np0.png\n")
    result = CliRunner().invoke(cli, ["predict", "--inputs", str(table / "short.csv"), "--model",
                                      str(table / "two.keras")])
    assert result.exit_code == 2
    assert "no column for the input meta: its header names the model's inputs, image, meta" in result.stderr


def test_the_command_line_explains_each_picture_input_at_its_layer(tmp_path, keras):
    model = change_detector(keras)
    model.save(tmp_path / "change.keras")
    rows = ["before,after"]
    for i, (b, a) in enumerate(zip(pictures(9, 2), pictures(10, 2))):
        Image.fromarray(b).save(tmp_path / f"b{i}.png")
        Image.fromarray(a).save(tmp_path / f"a{i}.png")
        rows.append(f"b{i}.png,a{i}.png")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["cam", "--inputs", str(tmp_path / "pairs.csv"), "--model",
                                      str(tmp_path / "change.keras"), "--layer", "before=before_conv,after=fused",
                                      "--precision", "fp32", "-o", str(out), "--save-heatmap"])
    assert result.exit_code == 0, result.output
    assert "gradcam of input after at layer fused (after the inputs merge: its maps are of before, after at once" \
        in result.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(rec["input"], rec["layer"]) for rec in records] == [("before", "before_conv")] * 2 + [
        ("after", "fused")] * 2
    assert records[0]["overlay"].startswith("b0.row0.gradcam.before.") and records[2]["overlay"].startswith(
        "a0.row0.gradcam.after.")
    for rec in records:
        i = int(rec["overlay"][1])
        given = [np.asarray(Image.open(tmp_path / f"b{i}.png")), np.asarray(Image.open(tmp_path / f"a{i}.png"))]
        expected = tape(keras, model, given, rec["layer"], rec["class_index"])
        saved = np.load(out / rec["heatmap"])
        assert r(saved, expected / expected.max()) >= 0.999


def test_a_model_of_several_inputs_given_pictures_alone_says_what_it_needs(table):
    result = CliRunner().invoke(cli, ["gradcam", str(table / "p0.png"), "--model", str(table / "two.keras"), "-o",
                                      str(table / "alone")])
    assert result.exit_code == 2
    assert "takes several inputs (image, meta): give its examples as --inputs TABLE.csv" in result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory, keras):
    """The picture-and-vector model, and its exports: LiteRT, a SavedModel and (with the onnx extra) ONNX."""
    folder = tmp_path_factory.mktemp("several-files")
    model = picture_and_vector(keras)
    model([np.zeros((1, SIZE, SIZE, 3), np.float32), np.zeros((1, FEATURES), np.float32)])  # built, for export
    made = {"litert": folder / "two.tflite", "savedmodel": folder / "two_savedmodel"}
    model.export(str(made["litert"]), format="litert", verbose=False)
    model.export(str(made["savedmodel"]), format="tf_saved_model", verbose=False)
    import importlib.util

    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("tf2onnx"):
        made["onnx"] = folder / "two.onnx"
        model.export(str(made["onnx"]), format="onnx", verbose=False)
    return model, made


@pytest.mark.parametrize("kind", ["onnx", "litert", "savedmodel"])
def test_a_model_file_of_several_inputs_holds_them_too(exported, kind):
    model, files = exported
    if kind not in files:
        pytest.skip("the ONNX extra is not installed: pip install -e '.[test,onnx]'")
    images, metas = pictures(13, 2), vectors(14, 2)
    made = Explainer(files[kind], method="rise", masks=32, cells=4, seed=2)
    assert (made.explained_input, [h.name for h in made._model.held]) == ("image", ["meta"])
    expected = np.asarray(model([images.astype(np.float32), metas]))
    predicted = made.predict([{"image": image, "meta": meta} for image, meta in zip(images, metas)])
    assert np.allclose([p.probabilities for p in predicted], expected, atol=1e-4)
    (rise, _) = made.explain({"image": images, "meta": metas})
    masks = rise_masks(32, 4, 0.5, 2, SIZE, SIZE).chunk(0, 32)
    hidden = 128.0 + (images[:1].astype(np.float32) - 128.0) * masks[..., None]
    scores = np.asarray(model([hidden, np.repeat(metas[:1], 32, axis=0)]))[:, rise.class_index]
    by_hand = np.tensordot(scores, masks, axes=1) / (32 * 0.5)
    assert np.allclose(rise.map, by_hand - by_hand.min(), atol=1e-3)


def test_each_class_explained_gets_its_own_attribution(keras):
    model = picture_and_vector(keras)
    images, metas = pictures(15, 2), vectors(16, 2)
    found = Explainer(model, precision="fp32").explain({"image": images, "meta": metas}, top_k=2)
    assert len(found) == 4 and len({(e.source, e.class_index) for e in found}) == 4
    for e in found:
        _, attribution = tape(keras, model, [images[e.source], metas[e.source]], "features", e.class_index, watched=1)
        assert np.allclose(e.attributions["meta"], attribution, atol=1e-5)


@pytest.mark.parametrize("top_k", [1, 2])
def test_a_pixel_methods_attribution_is_the_tapes(keras, top_k):
    model = picture_and_vector(keras)
    images, metas = pictures(17, 2), vectors(18, 2)
    found = Explainer(model, method="vanilla", precision="fp32").explain({"image": images, "meta": metas},
                                                                          top_k=top_k)
    assert len(found) == 2 * top_k
    for e in found:
        _, attribution = tape(keras, model, [images[e.source], metas[e.source]], "features", e.class_index, watched=1)
        assert np.allclose(e.attributions["meta"], attribution, atol=1e-5)
