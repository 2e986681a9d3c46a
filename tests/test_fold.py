"""BatchNormalization folded into the layer before it: the same maps and probabilities, the model untouched."""

from __future__ import annotations

import numpy as np
import pytest

from explain_cli.steps import compiled as explainer
from explain_cli.model import folding as fold
from explain_cli.model import loading as models
from explain_cli.model import cut as split


def trained_looking_batchnorm(net, seed: int = 0) -> None:
    """Random moving statistics, scales and shifts: with Keras' initial ones (0, 1, 1, 0) folding would be the
    identity, and a wrong fold would go unseen."""
    rng = np.random.default_rng(seed)
    for layer in net._flatten_layers():
        if type(layer).__name__ == "BatchNormalization":
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.2, n))


def built_in(keras, tmp_path, constructor: str, name: str) -> models.LoadedModel:
    keras.utils.set_random_seed(3)
    net = getattr(keras.applications, constructor)(weights=None)
    trained_looking_batchnorm(net)
    path = tmp_path / f"{name}.weights.h5"
    net.save_weights(path)
    return models.load(name, str(path))


def assert_same_explanations(model: models.LoadedModel, layer: str, images: np.ndarray) -> None:
    graph = explainer.graph_of(model)
    results = [explainer.compile_explain(model, split.split(graph, layer, fold=f), "gradcam", top_k=2)(images)
               for f in (False, True)]
    plain, folded = results
    np.testing.assert_allclose(folded.probabilities, plain.probabilities, atol=1e-4)
    np.testing.assert_array_equal(folded.classes, plain.classes)
    a, b = plain.maps.ravel(), folded.maps.ravel()
    assert a.std() > 0, "the maps are all zero: nothing would be compared"
    assert np.corrcoef(a, b)[0, 1] >= 0.9999


@pytest.mark.parametrize("constructor, name, layers", [
    ("ResNet50", "resnet50", ["conv5_block3_out", "conv4_block6_2_bn", "conv4_block6_2_conv"]),
    ("MobileNetV2", "mobilenet_v2", ["block_13_expand_relu", "block_16_project_BN"]),
    ("EfficientNetB0", "efficientnet_b0", ["top_activation"]),
    ("DenseNet121", "densenet121", ["relu"]),
])
def test_folded_maps_equal_unfolded_ones_at_any_cut(constructor, name, layers, keras, tmp_path):
    model = built_in(keras, tmp_path, constructor, name)
    graph = explainer.graph_of(model)
    batchnorms = sum(type(s.layer).__name__ == "BatchNormalization" for s in graph.steps)
    remaining = sum(type(s.layer).__name__ == "BatchNormalization" for s in fold.fold_batchnorm(graph).steps)
    assert remaining < batchnorms  # something was folded (DenseNet's pre-activation BatchNorms cannot be)
    images = np.random.default_rng(1).integers(0, 256, (3, model.height, model.width, 3), dtype=np.uint8)
    weights = [w.copy() for w in model.keras_model.get_weights()]
    for layer in layers:
        assert_same_explanations(model, layer, images)
    assert all(np.array_equal(a, b) for a, b in zip(model.keras_model.get_weights(), weights))  # untouched


def test_the_cut_is_never_folded_away(keras, tmp_path):
    """Cut at a convolution whose output a BatchNorm reads: A must stay the convolution's own output."""
    model = built_in(keras, tmp_path, "ResNet50", "resnet50")
    graph = explainer.graph_of(model)
    conv = graph.step(graph.find("conv4_block6_2_conv").step)
    kept = fold.fold_batchnorm(graph, keep={conv.outputs[0]})
    assert any(s.name.endswith("conv4_block6_2_bn") for s in kept.steps)
    assert not any(s.name.endswith("conv4_block6_2_bn") for s in fold.fold_batchnorm(graph).steps)


def test_a_graph_folded_twice_makes_each_folded_layer_once(shapes_model):
    """Predictions fold the whole model and a cut folds it again: the second fold takes the first one's layers."""
    model = models.load(str(shapes_model("none")))
    graph = explainer.graph_of(model)
    kept = graph.step(graph.find("conv2").step).outputs[0]
    whole, cut = fold.fold_batchnorm(graph), fold.fold_batchnorm(graph, keep={kept})
    folded_whole = {s.layer.name: s.layer for s in whole.steps if s.layer.name.endswith("_folded")}
    folded_cut = {s.layer.name: s.layer for s in cut.steps if s.layer.name.endswith("_folded")}
    assert set(folded_cut) == set(folded_whole) - {"conv2_folded"} and len(folded_cut) >= 2
    assert all(folded_cut[name] is folded_whole[name] for name in folded_cut)
    assert len(graph.folded) == len(folded_whole)


def test_a_user_model_and_a_nested_backbone_fold_the_same(shapes_model, nested_model_file, keras):
    for path in (shapes_model("none"), nested_model_file):
        model = models.load(str(path))
        trained_looking_batchnorm(model.keras_model, seed=5)
        graph = explainer.graph_of(model)
        images = np.random.default_rng(2).integers(0, 256, (3, model.height, model.width, 3), dtype=np.uint8)
        assert_same_explanations(model, explainer.default_layer(graph, model), images)


@pytest.mark.parametrize("layer", ["bn2", "bn3"])
def test_cutting_at_a_batchnorm_while_the_step_runs_with_folding_on(shapes_model, layer):
    """Folding takes a BatchNorm into the convolution before it, so the step named after the BatchNorm is gone; the
    cut taken while the step runs must find the step that makes A, not the step of A's name (StopIteration)."""
    model = models.load(str(shapes_model("none")), precision="fp32")
    trained_looking_batchnorm(model.keras_model, seed=3)
    graph = explainer.graph_of(model)
    images = np.random.default_rng(4).integers(0, 256, (3, model.height, model.width, 3), dtype=np.uint8)
    unfolded = explainer.compile_explain(model, split.split(graph, layer, fold=False), "gradcam", top_k=2)(images)
    hooked = explainer.compile_explain(model, split.split(graph, layer, hook=True), "gradcam", top_k=2)(images)
    np.testing.assert_array_equal(hooked.classes, unfolded.classes)
    np.testing.assert_allclose(hooked.maps, unfolded.maps, rtol=1e-4, atol=1e-5 * float(np.abs(unfolded.maps).max()))
