"""Vision Transformers, and layers inside subclassed layers.

A keras-hub ViT (4 blocks, 192 wide, on a 4 × 6 patch grid: the input is not square) and a plain Keras transformer
built from MultiHeadAttention layers, both with random weights. Every map is checked against a forward pass
written out by hand in the test, layer by layer, under one tape; the cut inside a subclassed layer is checked to
agree with the graph's own cut on a CNN, where both apply.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.steps import compiled as explainer
from explain_cli.model import sublayers as inner
from explain_cli.model import loading as models
from explain_cli.model import cut as split
from explain_cli.cli.main import cli
from explain_cli.methods import METHODS

if __import__("importlib").util.find_spec("keras_hub") is None:
    if os.environ.get("CI"):
        raise ImportError("CI installs the keras-hub extra: the transformer tests must run there")
    pytest.skip("keras-hub is not installed: pip install -e '.[test,hub]'", allow_module_level=True)

HEIGHT, WIDTH, PATCH = 32, 48, 8
GRID = (HEIGHT // PATCH, WIDTH // PATCH)  # (4, 6)
CLASSES = 5
ATOL = 1e-4  # relative to the largest value of the reference


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _vit(keras, class_token: bool = True, preprocessor: bool = False):
    import keras_hub

    keras.utils.set_random_seed(7)
    backbone = keras_hub.models.ViTBackbone(image_shape=(HEIGHT, WIDTH, 3), patch_size=PATCH, num_layers=4,
                                            num_heads=3, hidden_dim=192, mlp_dim=384, use_class_token=class_token,
                                            name="vi_t_backbone")  # not _1, _2 after others made in this process
    converter = keras_hub.layers.ViTImageConverter(image_size=(HEIGHT, WIDTH), scale=1 / 127.5, offset=-1.0)
    return keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=CLASSES, pooling="token" if class_token else "gap",
        preprocessor=keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter) if preprocessor else None,
    )


@pytest.fixture(scope="module")
def vit_file(keras, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vit") / "vit.keras"
    _vit(keras).save(path)
    return path


@pytest.fixture(scope="module")
def vit(vit_file):
    return models.load(str(vit_file))


@pytest.fixture(scope="module")
def plain_transformer(keras, tmp_path_factory):
    """Input → patches (a strided Conv2D) → 2 pre-norm blocks of MultiHeadAttention and an MLP → mean → Dense."""
    from keras import layers

    keras.utils.set_random_seed(8)
    inputs = keras.Input((HEIGHT, WIDTH, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = layers.Conv2D(64, PATCH, strides=PATCH, name="patches")(x)
    x = layers.Reshape((GRID[0] * GRID[1], 64), name="tokens")(x)
    for i in (1, 2):
        y = layers.LayerNormalization(name=f"norm{i}a")(x)
        y = layers.MultiHeadAttention(num_heads=2, key_dim=32, name=f"attention{i}")(y, y)
        x = layers.Add(name=f"residual{i}a")([x, y])
        y = layers.LayerNormalization(name=f"norm{i}b")(x)
        y = layers.Dense(64, name=f"mlp{i}")(layers.Dense(128, activation="gelu", name=f"expand{i}")(y))
        x = layers.Add(name=f"residual{i}b")([x, y])
    x = layers.GlobalAveragePooling1D(name="mean")(layers.LayerNormalization(name="final_norm")(x))
    outputs = layers.Dense(CLASSES, name="logits")(x)
    path = tmp_path_factory.mktemp("plain") / "plain_transformer.keras"
    keras.Model(inputs, outputs).save(path)
    return models.load(str(path))


def _images(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 256, size=(n, HEIGHT // 4, WIDTH // 4, 3)).astype(np.uint8)
    return blocks.repeat(4, axis=1).repeat(4, axis=2)


def _gradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    weights = gradients.mean(axis=(1, 2), keepdims=True)
    return np.maximum((weights * activations).sum(axis=-1), 0.0)


def _rollout(scores: list[np.ndarray], extra: int) -> np.ndarray:
    """Abnar & Zuidema's rollout in numpy, per image: heads averaged, + I, rows renormalised, multiplied through."""
    result = None
    for a in scores:
        a = a.mean(axis=1) + np.eye(a.shape[-1])
        a = a / a.sum(axis=-1, keepdims=True)
        result = a if result is None else a @ result
    row = result[:, 0, :] if extra else result.mean(axis=1)
    return row[:, extra:].reshape(-1, *GRID)


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = np.abs(expected).max()
    assert scale > 0, "the reference is all zero: the test would prove nothing"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL * scale)


def _by_hand_vit(model: models.LoadedModel, images: np.ndarray, cut_block: int, classes: np.ndarray):
    """keras-hub's ViT written out: embedding, the blocks (each as its call does it), final norm, class token,
    Dense; Grad-CAM at the output of block `cut_block` (1-based); and every block's attention scores."""
    import tensorflow as tf

    net = model.keras_model
    embedding = net.backbone.get_layer("vit_patching_and_embedding")
    encoder = net.backbone.get_layer("vit_encoder")
    x = model.preprocess(tf.constant(images, tf.float32))
    with tf.GradientTape(persistent=True) as tape:
        tokens = encoder.dropout(embedding(x))
        scores = []
        for number, block in enumerate(encoder.encoder_layers, start=1):
            normed = block.layer_norm_1(tokens)
            attended, attention = block.mha(normed, normed, return_attention_scores=True)
            scores.append(attention.numpy())
            tokens = tokens + attended
            tokens = tokens + block.mlp(block.layer_norm_2(tokens))
            if number == cut_block:
                kept = tokens
        logits = net.get_layer("predictions")(encoder.layer_norm(tokens)[:, 0, :])
        chosen = tf.reduce_sum(tf.gather(logits, classes, batch_dims=1))
    gradients = tape.gradient(chosen, kept).numpy()
    grid = lambda t: t[:, 1:, :].reshape(-1, *GRID, t.shape[-1])  # noqa: E731
    return _gradcam(grid(kept.numpy()), grid(gradients)), scores, logits.numpy()


# --- layers inside subclassed layers, and tokens as grids ----------------------------------------------------------


def test_the_catalogue_finds_the_blocks_inside_the_encoder_and_their_grid(vit):
    graph = explainer.graph_of(vit)
    block = graph.find("vi_t_backbone/vit_encoder/transformer_block_3")
    assert (block.grid, block.extra, block.shape) == (GRID, 1, (1 + GRID[0] * GRID[1], 192))
    assert block.grid_shape == (*GRID, 192) and block.path == ("transformer_block_3",)
    assert graph.find("transformer_block_4/mha").attention
    # The MLP's dropout runs twice per block: not one activation, so not a cut.
    twice = graph.find("vi_t_backbone/vit_encoder/transformer_block_1/mlp/dropout")
    assert twice.calls == 2 and not twice.explainable
    with pytest.raises(split.ExplainError, match="runs 2 times in one forward pass"):
        split.split(graph, twice.name)
    with pytest.raises(split.ExplainError, match="'mha' is ambiguous: it matches .*transformer_block_1/mha"):
        graph.find("mha")


def test_the_default_for_a_vit_is_the_input_of_its_last_block(vit):
    assert explainer.default_layer(explainer.graph_of(vit), vit) == "vi_t_backbone/vit_encoder/transformer_block_3"


def test_layers_lists_token_layers_with_their_grid_and_marks_the_default(vit_file):
    result = run("layers", "--model", vit_file)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"\* vi_t_backbone/vit_encoder/transformer_block_3 +\(4, 6, 192\) tokens", lines[
        [i for i, line in enumerate(lines) if line.startswith("*")][0]])
    assert any(re.fullmatch(r"  vi_t_backbone/vit_encoder/transformer_block_2/mlp/dense_1 +\(4, 6, 384\) tokens", line)
               for line in lines)
    assert any(re.fullmatch(r"  vi_t_backbone/vit_patching_and_embedding/patch_embedding +\(4, 6, 192\)", line)
               for line in lines)
    assert not any("dropout" in line and "mlp" in line for line in lines)  # runs twice per pass
    assert not any("position_embedding" in line for line in lines)  # the same for every image


@pytest.mark.parametrize("block", [3, 1])
def test_gradcam_inside_the_encoder_equals_the_vit_written_out_by_hand(vit, block):
    images = _images()
    cut = split.split(explainer.graph_of(vit), f"vi_t_backbone/vit_encoder/transformer_block_{block}")
    result = explainer.compile_explain(vit, cut, "gradcam", top_k=2)(images)
    assert result.maps.shape == (3, 2, *GRID)
    for rank in range(2):
        expected, _, logits = _by_hand_vit(vit, images, block, result.classes[:, rank])
        _close(result.maps[:, rank], expected)
    np.testing.assert_array_equal(result.classes, np.argsort(-logits, axis=1)[:, :2])


def test_after_the_last_block_only_the_class_token_has_a_gradient_so_gradcam_there_is_blank(vit):
    """Why the default is the last block's input: the head reads the class token alone after the last block."""
    images = _images()
    cut = split.split(explainer.graph_of(vit), "vi_t_backbone/vit_encoder/transformer_block_4")
    result = explainer.compile_explain(vit, cut, "gradcam")(images)
    expected, _, _ = _by_hand_vit(vit, images, 4, result.classes[:, 0])
    assert not expected.any() and not result.maps.any()


def test_attention_rollout_equals_numpy_on_the_attention_written_out_by_hand(vit):
    images = _images()
    cut = split.split(explainer.graph_of(vit), explainer.default_layer(explainer.graph_of(vit), vit))
    result = explainer.compile_explain(vit, cut, "attention-rollout", top_k=2)(images)
    _, scores, _ = _by_hand_vit(vit, images, 4, np.zeros(3, int))
    assert len(scores) == 4 and scores[0].shape == (3, 3, 25, 25)
    expected = _rollout(scores, extra=1)
    _close(result.maps[:, 0], expected)
    _close(result.maps[:, 1], expected)  # class-agnostic


@pytest.mark.parametrize("method", [m for m in METHODS if m != "cam"])
def test_every_class_activation_method_works_on_a_vit(vit, method):
    graph = explainer.graph_of(vit)
    result = explainer.compile_explain(vit, split.split(graph, explainer.default_layer(graph, vit)), method)(_images())
    assert result.maps.shape == (3, 1, *GRID)
    assert np.isfinite(result.maps).all() and result.maps.max() > 0


def test_cam_on_a_vit_says_its_head_is_not_pooling_then_dense(vit_file, tmp_path):
    Image.fromarray(_images(1)[0]).save(tmp_path / "a.png")
    result = run("cam", "--method", "cam", tmp_path / "a.png", "--model", vit_file, "-o", tmp_path / "out")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 2  # the model line, the error
    assert "cam needs the layer to be followed by global average pooling then Dense" in result.stderr


def test_the_model_object_is_left_as_it_was(vit):
    graph = explainer.graph_of(vit)
    before = vit.keras_model.predict(vit.preprocess(_images().astype("float32")), verbose=0)
    for method in ("gradcam", "attention-rollout"):
        explainer.compile_explain(vit, split.split(graph, "transformer_block_2"), method)(_images())
    layers = vit.keras_model._flatten_layers()
    assert not [layer.name for layer in layers if "call" in vars(layer)]
    after = vit.keras_model.predict(vit.preprocess(_images().astype("float32")), verbose=0)
    np.testing.assert_array_equal(before, after)


def test_a_vit_without_a_class_token_is_cut_on_all_its_tokens(keras):
    model = _vit(keras, class_token=False)
    loaded = models.LoadedModel("gap-vit", model, HEIGHT, WIDTH, 3, lambda x: x, None,
                                models.labels_module.for_model(CLASSES, None))
    graph = explainer.graph_of(loaded)
    point = graph.find(explainer.default_layer(graph, loaded))
    assert (point.grid, point.extra) == (GRID, 0)
    result = explainer.compile_explain(loaded, split.split(graph, point.name), "attention-rollout")(_images())
    assert result.maps.shape == (3, 1, *GRID) and np.isfinite(result.maps).all()


def test_a_vit_saved_with_its_preprocessor_is_fed_through_its_image_converter(keras, tmp_path):
    path = tmp_path / "with_preprocessor.keras"
    _vit(keras, preprocessor=True).save(path)
    loaded = models.load(str(path))
    images = _images()
    probabilities = explainer.compile_predict(loaded, explainer.graph_of(loaded))(images)
    task = keras.saving.load_model(path, compile=False)
    expected = keras.ops.softmax(task.predict(images.astype("float32"), verbose=0)).numpy()  # predict preprocesses
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_a_vit_end_to_end_writes_overlays_at_the_default_layer(vit_file, tmp_path):
    for i, image in enumerate(_images(2)):
        Image.fromarray(image).resize((240, 160)).save(tmp_path / f"{i}.jpg")
    for method in ("gradcam", "attention-rollout"):
        result = run("cam", "--method", method, tmp_path, "--model", vit_file, "-o", tmp_path / "out")
        assert result.exit_code == 0, result.output
        assert "gradcam at layer vi_t_backbone/vit_encoder/transformer_block_3 (default)" in result.stderr or \
            method != "gradcam"
    written = sorted(p.name for p in (tmp_path / "out").glob("*.jpg"))
    assert len(written) == 4 and all(Image.open(tmp_path / "out" / n).size == (240, 160) for n in written)


def test_without_keras_hub_the_error_says_how_to_install_it(vit_file):
    code = ("import sys; sys.modules['keras_hub'] = None\n"
            "from explain_cli.cli.main import main\n"
            f"main(['layers', '--model', {str(vit_file)!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {vit_file}: cannot load the model: it is a keras-hub model, and keras-hub is not installed: "
        "pip install 'explain-cli[hub]'")


def test_attention_rollout_on_a_cnn_is_a_one_line_error(tiny_model, tmp_path):
    Image.fromarray(_images(1)[0]).save(tmp_path / "a.png")
    result = run("cam", "--method", "attention-rollout", tmp_path / "a.png", "--model", tiny_model, "-o", tmp_path)
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines()[-1].endswith(
        "attention-rollout needs a transformer: this model has no MultiHeadAttention layer on a patch grid")


# --- a transformer built from Keras' own layers ----------------------------------------------------------------------


def _by_hand_plain(model: models.LoadedModel, images: np.ndarray, classes: np.ndarray):
    """The plain transformer's layers called one by one: Grad-CAM at the last block's first norm, and the scores."""
    import tensorflow as tf

    net = model.keras_model
    layer = net.get_layer
    with tf.GradientTape() as tape:
        x = layer("tokens")(layer("patches")(net.layers[1](tf.constant(images, tf.float32))))
        scores = []
        for i in (1, 2):
            y = layer(f"norm{i}a")(x)
            if i == 2:
                kept = y
                tape.watch(kept)
            y, attention = layer(f"attention{i}")(y, y, return_attention_scores=True)
            scores.append(attention.numpy())
            x = x + y
            x = x + layer(f"mlp{i}")(layer(f"expand{i}")(layer(f"norm{i}b")(x)))
        logits = layer("logits")(tf.reduce_mean(layer("final_norm")(x), axis=1))
        chosen = tf.reduce_sum(tf.gather(logits, classes, batch_dims=1))
    gradients = tape.gradient(chosen, kept).numpy()
    grid = lambda t: t.reshape(-1, *GRID, t.shape[-1])  # noqa: E731
    return _gradcam(grid(kept.numpy()), grid(gradients)), scores


def test_a_plain_keras_transformer_defaults_to_the_norm_before_its_last_attention(plain_transformer):
    graph = explainer.graph_of(plain_transformer)
    assert explainer.default_layer(graph, plain_transformer) == "norm2a"
    assert graph.find("norm2a").grid == GRID and graph.find("norm2a").extra == 0


def test_a_plain_keras_transformer_gradcam_and_rollout_equal_the_layers_called_by_hand(plain_transformer):
    images = _images()
    cut = split.split(explainer.graph_of(plain_transformer), "norm2a")
    gradcam = explainer.compile_explain(plain_transformer, cut, "gradcam")(images)
    expected, scores = _by_hand_plain(plain_transformer, images, gradcam.classes[:, 0])
    _close(gradcam.maps[:, 0], expected)
    rollout = explainer.compile_explain(plain_transformer, cut, "attention-rollout")(images)
    _close(rollout.maps[:, 0], _rollout(scores, extra=0))


# --- the cut inside a call agrees with the graph's own cut, on a CNN --------------------------------------------------


@pytest.mark.parametrize("layer", ["conv5_block3_out", "conv5_block3_2_relu", "conv4_block6_out"])
def test_cutting_a_cnn_while_it_runs_equals_cutting_its_graph(nested_model_file, layer):
    model = models.load(str(nested_model_file))
    graph = explainer.graph_of(model)
    images = np.random.default_rng(1).integers(0, 256, size=(2, 224, 224, 3)).astype(np.uint8)
    replayed = explainer.compile_explain(model, split.split(graph, layer, fold=False), "gradcam", top_k=2)(images)
    hooked = explainer.compile_explain(model, split.split(graph, layer, fold=False, hook=True), "gradcam",
                                       top_k=2)(images)
    np.testing.assert_array_equal(hooked.classes, replayed.classes)
    _close(hooked.maps, replayed.maps)


def test_a_subclassed_block_inside_a_cnn_can_be_cut_at_its_sublayers(keras, tmp_path):
    """A user's residual block (a subclassed layer calling two convolutions), cut between them."""
    import tensorflow as tf
    from keras import layers

    class Residual(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.first = layers.Conv2D(8, 3, padding="same", activation="relu", name="first")
            self.second = layers.Conv2D(8, 3, padding="same", name="second")

        def call(self, x):
            return tf.nn.relu(x + self.second(self.first(x)))

    keras.utils.set_random_seed(4)
    inputs = keras.Input((HEIGHT, WIDTH, 3))
    stem = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")
    block = Residual(name="block")
    dense = layers.Dense(CLASSES, name="logits")
    outputs = dense(layers.GlobalAveragePooling2D()(block(stem(layers.Rescaling(1 / 255)(inputs)))))
    net = keras.Model(inputs, outputs)
    loaded = models.LoadedModel("residual", net, HEIGHT, WIDTH, 3, lambda x: x, None,
                                models.labels_module.for_model(CLASSES, None))
    graph = explainer.graph_of(loaded)
    assert [p.name for p in graph.explainable()][-3:] == ["block/first", "block/second", "block"]
    images = _images()
    result = explainer.compile_explain(loaded, split.split(graph, "block/first"), "gradcam")(images)

    with tf.GradientTape() as tape:
        h = stem(tf.constant(images, tf.float32) / 255)
        kept = block.first(h)
        logits = dense(tf.reduce_mean(tf.nn.relu(h + block.second(kept)), axis=(1, 2)))
        chosen = tf.reduce_sum(tf.gather(logits, result.classes[:, 0], batch_dims=1))
    _close(result.maps[:, 0], _gradcam(kept.numpy(), tape.gradient(chosen, kept).numpy()))
    assert inner.sublayer(block, ("first",)) is block.first


def test_activations_draws_token_layers_as_grids(vit_file, tmp_path):
    Image.fromarray(_images(1)[0]).save(tmp_path / "a.png")
    result = run("activations", tmp_path / "a.png", "--model", vit_file, "-o", tmp_path / "out",
                 "--layer", "transformer_block_2/ln_2", "--layer", "patch_embedding")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("a.activations.*.png"))) == 2


def _point(name: str, shape: tuple, order: int) -> inner.Point:
    return inner.Point(name, name, (), shape, order=order, started=order)


@pytest.mark.parametrize("tokens, maps, size, expected", [
    (197, [(14, 14, 384)], (224, 224), ((14, 14), 1)),  # ViT-B/16: a class token
    (201, [(14, 14, 384)], (224, 224), ((14, 14), 5)),  # a class token and 4 registers
    (198, [(14, 14, 384)], (224, 224), ((14, 14), 2)),  # DeiT: class and distillation tokens
    (49, [(56, 56, 96), (7, 7, 768)], (224, 224), ((7, 7), 0)),  # the latest feature map that fits
    (25, [], (32, 48), ((4, 6), 1)),  # no feature map: the input's aspect ratio, one token left over
    (64, [(4, 16, 32)], (64, 64), ((8, 8), 0)),  # Swin's windows (4 × 16) are not the image's shape
])
def test_tokens_are_laid_out_on_the_grid_of_the_patch_embedding(tokens, maps, size, expected):
    points = [_point(f"map{i}", shape, i) for i, shape in enumerate(maps)] + [_point("tokens", (tokens, 384), 9)]
    (placed,) = [p for p in inner._with_grids(points, size) if p.name == "tokens"]
    assert (placed.grid, placed.extra) == expected
    assert placed.describe() == f"({expected[0][0]}, {expected[0][1]}, 384) tokens"


def test_tokens_that_fit_no_grid_are_not_a_cut():
    (placed,) = inner._with_grids([_point("tokens", (23, 64), 0)], (HEIGHT, WIDTH))  # 23 − k is never 2:3
    assert placed.grid is None and not placed.explainable


def test_the_sanity_cascade_randomises_a_vit_block_by_block(vit_file, tmp_path):
    Image.fromarray(_images(1)[0]).save(tmp_path / "a.png")
    result = run("evaluate", tmp_path / "a.png", "--model", vit_file, "--methods", "gradcam,attention-rollout",
                 "--sanity", "--sanity-stages", "25", "--steps", "4", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    import json

    rows = [json.loads(line) for line in (tmp_path / "out" / "sanity.jsonl").read_text().splitlines()]
    deepest = [r["deepest_randomised"] for r in rows if r["method"] == "gradcam"]
    # From the logits down, each layer with weights of its own: the final norm, then block 4's sublayers, ...
    assert deepest[:3] == ["predictions", "vi_t_backbone/vit_encoder/ln",
                           "vi_t_backbone/vit_encoder/transformer_block_4/mlp/dense_2"]
    assert "vi_t_backbone/vit_encoder/transformer_block_1/mha" in deepest
    assert deepest[-3:] == ["vi_t_backbone/vit_patching_and_embedding",  # its own weight: the class token
                            "vi_t_backbone/vit_patching_and_embedding/position_embedding",
                            "vi_t_backbone/vit_patching_and_embedding/patch_embedding"]


def _deit(keras):
    import keras_hub

    keras.utils.set_random_seed(9)
    backbone = keras_hub.models.DeiTBackbone(image_shape=(HEIGHT, WIDTH, 3), patch_size=PATCH, num_layers=2,
                                             num_heads=3, hidden_dim=192, intermediate_dim=384, name="dei_t_backbone")
    return keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=CLASSES)


def _swin(keras):
    import keras_hub

    keras.utils.set_random_seed(10)
    backbone = keras_hub.models.SwinTransformerBackbone(image_shape=(64, 64, 3), embed_dim=32, depths=[2, 2],
                                                        num_heads=[2, 4], window_size=4, patch_size=4,
                                                        name="swin_transformer_backbone")
    return keras_hub.models.SwinTransformerImageClassifier(backbone=backbone, num_classes=CLASSES)


@pytest.mark.parametrize("build, layer, grid, extra, default", [
    # DeiT: a class and a distillation token; its blocks return (tokens, scores), so the input of the last block
    # is the output of the block before it, which its output layer (residual included) computes.
    (_deit, "dei_t_backbone/deit_encoder/transformer_block_2/ln_1", GRID, 2,
     "dei_t_backbone/deit_encoder/transformer_block_1/output_layer"),
    # Swin: patch merging halves the grid at each stage; its windows are not the image's shape.
    (_swin, "swin_transformer_backbone/stage_1/blocks_1", (8, 8), 0, "swin_transformer_backbone/norm"),
], ids=["deit", "swin"])
def test_other_keras_hub_transformers_are_cut_on_their_own_grids(keras, tmp_path, build, layer, grid, extra, default):
    path = tmp_path / "model.keras"
    build(keras).save(path)
    model = models.load(str(path))
    graph = explainer.graph_of(model)
    point = graph.find(layer)
    assert (point.grid, point.extra) == (grid, extra)
    assert explainer.default_layer(graph, model) == default
    images = np.random.default_rng(0).integers(0, 256, (2, model.height, model.width, 3), dtype=np.uint8)
    for method in ("gradcam", "layercam"):
        maps = explainer.compile_explain(model, split.split(graph, layer), method)(images).maps
        assert maps.shape == (2, 1, *grid) and np.isfinite(maps).all() and maps.max() > 0


@pytest.mark.parametrize("build, layer, patch", [
    (_deit, "deit_encoder/transformer_block_1/ln_1", 8),  # 4 × 6 patches, after 2 extra tokens
    (_swin, "stage_0/blocks_0/norm1", 4),  # 16 × 16 patches
], ids=["deit", "swin"])
def test_a_token_lands_in_the_grid_cell_of_its_patch(keras, tmp_path, build, layer, patch):
    """Before any attention, a layer is per token: changing the pixels of one patch (row r, column c, counted by hand
    on the image) changes that patch's token alone, and explain's grid must show the change in cell (r, c), nowhere
    else. A grid read in the wrong order, or with the class or distillation tokens counted among the patches, puts it
    elsewhere."""
    path = tmp_path / "model.keras"
    build(keras).save(path)
    model = models.load(str(path))
    grid_of = split.outputs_of(explainer.graph_of(model), [layer])
    image = np.random.default_rng(0).integers(0, 256, (1, model.height, model.width, 3), dtype=np.uint8)
    rows, cols = model.height // patch, model.width // patch
    before = np.asarray(grid_of(model.preprocess(image.astype("float32")))[0])[0]
    assert before.shape[:2] == (rows, cols)
    for r, c in ((0, 0), (1, cols - 2), (rows - 1, 1)):
        changed = image.copy()
        changed[0, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = 255 - changed[0, r * patch:(r + 1) * patch,
                                                                                        c * patch:(c + 1) * patch]
        after = np.asarray(grid_of(model.preprocess(changed.astype("float32")))[0])[0]
        moved = np.abs(after - before).max(axis=-1)
        assert moved[r, c] > 0.1 and np.count_nonzero(moved > 1e-5) == 1, (r, c, np.argwhere(moved > 1e-5))


def test_a_cut_inside_a_block_equals_the_hand_computation_and_its_head_starts_at_the_cut(vit):
    """Cut at block 3's first norm, whose residual needs the block's input: the head is given the outputs of blocks 1
    and 2 from the feature pass instead of computing them again (each block's call runs once while the step is
    traced, where the head used to run blocks 1 and 2 a second time), and the map is still the model's own."""
    import tensorflow as tf

    from explain_cli.model import sublayers as inner

    images = _images()
    cut = split.split(explainer.graph_of(vit), "transformer_block_3/ln_1")
    encoder = vit.keras_model.backbone.get_layer("vit_encoder")
    calls = {number: 0 for number in (1, 2, 3)}

    def counting(number):
        def wrap(original):
            def call(*args, **kwargs):
                calls[number] += 1
                return original(*args, **kwargs)

            return call

        return wrap

    blocks = encoder.encoder_layers
    with inner.intercepted([(blocks[n - 1], counting(n)) for n in calls]):
        result = explainer.compile_explain(vit, cut, "gradcam")(images)
    assert calls == {1: 1, 2: 1, 3: 2}  # block 3 runs in both parts: the cut is inside it

    x = vit.preprocess(tf.constant(images, tf.float32))
    with tf.GradientTape() as tape:
        tokens = encoder.dropout(vit.keras_model.backbone.get_layer("vit_patching_and_embedding")(x))
        for number, block in enumerate(blocks, start=1):
            normed = block.layer_norm_1(tokens)
            if number == 3:
                kept = normed
                tape.watch(kept)
            tokens = tokens + block.mha(normed, normed)
            tokens = tokens + block.mlp(block.layer_norm_2(tokens))
        logits = vit.keras_model.get_layer("predictions")(encoder.layer_norm(tokens)[:, 0, :])
        chosen = tf.reduce_sum(tf.gather(logits, result.classes[:, 0], batch_dims=1))
    gradients = tape.gradient(chosen, kept).numpy()
    grid = lambda t: t[:, 1:, :].reshape(-1, *GRID, t.shape[-1])  # noqa: E731
    _close(result.maps[:, 0], _gradcam(grid(kept.numpy()), grid(gradients)))
