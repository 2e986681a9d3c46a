"""--precision: bfloat16 where the CPU has it, maps that agree with float32, and the choice said with --verbose."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from explain_cli.steps import compiled as explainer
from explain_cli.model import loading as models
from explain_cli.model import runtime as offload
from explain_cli.model import precision
from explain_cli.steps import precision as choosing
from explain_cli.render import heatmaps as render
from explain_cli.model import cut as split
from explain_cli.model.graph import flatten
from explain_cli.cli.main import cli
from explain_cli.methods import METHODS
from tests.synthetic import make_scene

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\nbogomips\t: 4000\n"
# Where bfloat16 is emulated (TensorFlow's own kernels, converting around each operation: an AMD EPYC, or
# TF_ENABLE_ONEDNN_OPTS=0 here), it is rounded in other places than on AMX or AVX512-BF16. Measured with
# TF_ENABLE_ONEDNN_OPTS=0 on this project's machine: XGrad-CAM on VGG16 r = 0.9981 (the AMD report: 0.9981), every
# other method at r >= 0.9993, against r >= 0.9991 with native bfloat16.
AGREEMENT = {"native": 0.999, "emulated": 0.995}
SUPPORT = precision.bf16_support()
needs_bf16 = pytest.mark.skipif(SUPPORT == "unavailable", reason=(
    "ONEDNN_MAX_CPU_ISA hides this CPU's bfloat16 instructions from oneDNN, which then refuses TensorFlow's bfloat16 "
    "convolutions (explain says so in one line: test_forced_bf16_where_onednn_is_denied_it_is_one_line); "
    "TF_ENABLE_ONEDNN_OPTS=0 runs the emulated case"))


def test_auto_takes_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert precision.cpu_flags(CPUINFO) >= {"avx512_bf16", "amx_tile"}
    assert choosing.resolve("auto", ["gradcam"], flags={"amx_bf16"})[0] == "bf16"
    assert choosing.resolve("auto", ["gradcam"], flags={"avx512_bf16"}) == (
        "bf16", "auto: the CPU computes bfloat16 natively (avx512_bf16)")
    assert choosing.resolve("auto", ["gradcam"], flags={"avx2", "fma"})[0] == "fp32"
    assert choosing.resolve("bf16", ["vanilla"], flags=set()) == ("bf16", "--precision bf16")
    assert choosing.resolve("fp32", ["gradcam"], flags={"amx_bf16"}) == ("fp32", "--precision fp32")


def test_onednn_max_cpu_isa_takes_native_bf16_away_as_it_does_from_tensorflow(monkeypatch):
    both = {"amx_bf16", "avx512_bf16", "avx2"}
    assert precision.native_bf16(both, max_isa="") == ["amx_bf16", "avx512_bf16"]
    assert precision.native_bf16(both, max_isa="AVX2") == []
    assert precision.native_bf16(both, max_isa="avx512_core_bf16") == ["avx512_bf16"]
    assert precision.native_bf16(both, max_isa="AVX10_1_512_AMX") == ["amx_bf16", "avx512_bf16"]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    chosen, why = choosing.resolve("auto", ["gradcam"], flags=both)
    assert chosen == "fp32" and "ONEDNN_MAX_CPU_ISA=AVX2" in why
    assert precision.bf16_support(both) == "unavailable" and precision.bf16_support({"avx2"}) == "emulated"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # TensorFlow's own kernels: bfloat16 emulated, not refused
    assert precision.bf16_support(both) == "emulated"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert precision.bf16_support(both) == "native"


def test_forced_bf16_where_onednn_is_denied_it_is_one_line(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx512_bf16"})  # such a CPU, here or not
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(make_scene(np.random.default_rng(1)).image).save(image)
    result = CliRunner().invoke(cli, ["gradcam", str(image), "--model", str(tiny_model), "-o", str(tmp_path / "out"),
                                      "--precision", "bf16"], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: --precision bf16: ONEDNN_MAX_CPU_ISA=AVX2 forbids oneDNN the CPU's bfloat16 instructions, so "
        "TensorFlow cannot run bfloat16 convolutions; unset it, set TF_ENABLE_ONEDNN_OPTS=0, or use --precision fp32"]


@pytest.mark.parametrize("method", ["vanilla", "guided-gradcam", "classviz", "hirescam", "layercam"])
def test_auto_keeps_in_fp32_what_does_not_hold_up_in_bf16(method):
    chosen, why = choosing.resolve("auto", ["gradcam", method], flags={"amx_bf16"})
    assert chosen == "fp32" and why.startswith(f"auto: {method} stays in fp32")


def both(keras, tmp_path, constructor: str, name: str) -> tuple[models.LoadedModel, models.LoadedModel]:
    keras.utils.set_random_seed(11)
    path = tmp_path / f"{name}.weights.h5"
    getattr(keras.applications, constructor)(weights=None).save_weights(path)
    return models.load(name, str(path), precision="fp32"), models.load(name, str(path), precision="bf16")


def agreement(fp32: models.LoadedModel, bf16: models.LoadedModel, layer: str, method: str, images: np.ndarray,
              runtimes: tuple[str, ...] = ("tensorflow",)):
    """Per runtime of the bf16 model's feature pass (OpenVINO computes in the precision it is given), the correlation
    of its maps with the fp32 model's, and the share of images whose top class they agree on; one runtime: that pair."""
    reference = _explained(fp32, layer, method, images, "tensorflow")
    found = []
    for runtime in runtimes:
        result = _explained(bf16, layer, method, images, runtime)
        a, b = reference.maps.astype(np.float32).ravel(), result.maps.astype(np.float32).ravel()
        assert result.maps.dtype == np.float32 and result.probabilities.dtype == np.float32
        assert a.std() > 0, f"{method}: all-zero maps prove nothing"
        found.append((float(np.corrcoef(a, b)[0, 1]), float(np.mean(reference.classes[:, 0] == result.classes[:, 0]))))
    return found[0] if len(found) == 1 else found


def _explained(model: models.LoadedModel, layer: str, method: str, images: np.ndarray, runtime: str):
    chosen = None if runtime == "tensorflow" else offload.Offload(
        runtime, model.precision, (model.height, model.width, model.channels), model.identity)
    cut = split.split(explainer.graph_of(model, chosen), layer)
    return explainer.compile_explain(model, cut, method, max_masks=16)(images)


@needs_bf16
@pytest.mark.parametrize("constructor, name, layer", [("ResNet50", "resnet50", "conv5_block3_out"),
                                                      ("VGG16", "vgg16", "block5_conv3")])
def test_bf16_maps_agree_with_fp32_for_every_class_activation_method(constructor, name, layer, keras, tmp_path):
    """TensorFlow's bf16, and on ResNet50 OpenVINO's too (auto gives OpenVINO the run's precision), held to one bound."""
    fp32, bf16 = both(keras, tmp_path, constructor, name)
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    runtimes = ("tensorflow", "openvino") if name == "resnet50" and offload.installed("openvino") else ("tensorflow",)
    for method in (m for m in METHODS if not METHODS[m].attention):  # transformers: tests/test_transformers.py
        if method == "cam" and name == "vgg16":
            continue  # VGG16's head is Flatten → Dense: no CAM (it says so), in either precision
        found = agreement(fp32, bf16, layer, method, images, runtimes)
        for runtime, (r, same_top1) in zip(runtimes, found if len(runtimes) > 1 else [found]):
            assert same_top1 == 1.0, (method, runtime)
            if method in choosing.FP32_UNDER_AUTO:  # measured here: why auto keeps these in fp32
                assert r >= (0.99 if name == "resnet50" else 0.9), (method, runtime, r)
            else:
                assert r >= AGREEMENT[SUPPORT], (method, runtime, r, SUPPORT)


@needs_bf16
def test_on_the_trained_cnn_bf16_finds_the_same_classes_and_places(tiny_model):
    fp32, bf16 = (models.load(str(tiny_model), precision=p) for p in ("fp32", "bf16"))
    rng = np.random.default_rng(77)
    scenes = [make_scene(rng) for _ in range(100)]
    images = np.stack([s.image for s in scenes])
    found = []
    for model in (fp32, bf16):
        graph = explainer.graph_of(model)
        result = explainer.compile_explain(model, split.split(graph, "conv3"), "gradcam")(images)
        inside = 0
        for scene, heatmap in zip(scenes, result.maps[:, 0]):
            full = render.upsample(render.normalise(heatmap), 64, 64)
            row, col = np.unravel_index(np.argmax(full), full.shape)
            top, left, bottom, right = scene.box
            inside += top <= row < bottom and left <= col < right
        found.append((result.classes[:, 0], inside, result.maps.ravel()))
    assert np.mean(found[0][0] == found[1][0]) >= 0.99  # the same top-1 on at least 99 % of the images
    assert abs(found[0][1] - found[1][1]) <= 2  # localisation unchanged: peaks inside the square
    assert np.corrcoef(found[0][2], found[1][2])[0, 1] >= AGREEMENT[SUPPORT]
    for method in (m for m in METHODS if not METHODS[m].attention):
        if method != "gradcam" and method not in choosing.FP32_UNDER_AUTO:
            assert agreement(fp32, bf16, "conv3", method, images[:8])[0] >= AGREEMENT[SUPPORT], method


def test_verbose_says_which_precision_and_why(tiny_model, tmp_path):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(make_scene(np.random.default_rng(1)).image).save(image)
    choices = (("fp32", "gradcam"), ("bf16", "gradcam"), ("auto", "gradcam"), ("auto", "vanilla"))
    for choice, method in (c for c in choices if SUPPORT != "unavailable" or c[0] != "bf16"):
        command = ["saliency" if method == "vanilla" else "gradcam", image, "--model", tiny_model, "-o",
                   tmp_path / "out", "--precision", choice, "-v"]
        result = CliRunner().invoke(cli, [str(c) for c in command], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        expected = choosing.resolve(choice, [method])
        assert f"note: precision {expected[0]} ({expected[1]})" in result.stderr


@pytest.mark.parametrize("chosen", [pytest.param("bf16", marks=needs_bf16), "fp32"])
def test_the_replayed_layers_share_the_users_variables(tiny_model, chosen):
    """bf16 layers and the logits layer without its softmax are copies that compute with the model's own variables:
    what changes the model's weights (evaluate --sanity's cascade) changes what explain computes, with no new trace,
    and no second set of weights is held."""
    model = models.load(str(tiny_model), precision=chosen)
    step = explainer.compile_explain(model, split.split(explainer.graph_of(model), "conv2"), "gradcam")
    images = np.stack([make_scene(np.random.default_rng(i)).image for i in range(2)])
    before = step(images)
    for name in ("conv1", "scores"):  # a 4-D layer (a bf16 copy) and the Dense whose softmax is left out
        layer = model.keras_model.get_layer(name)
        kept = layer.kernel.numpy()
        layer.kernel.assign(kept[..., ::-1] if name == "scores" else -kept)
        try:
            after = step(images)
        finally:
            layer.kernel.assign(kept)
        assert not np.allclose(after.probabilities, before.probabilities), name
    np.testing.assert_array_equal(step(images).probabilities, before.probabilities)
    assert step.traced.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("kind", ["head", "pooling"])
def test_a_layer_of_layers_computes_in_bf16_with_its_sublayers(keras, kind):
    """A layer that calls layers (keras-hub's RetinaNet head: convolutions inside one layer; DeepLabV3's pyramid
    pooling: keras.Sequential stacks inside one layer) is twinned with its sublayers, each of which would otherwise
    compute in the float32 it was made with, whatever its parent's policy. The user's layer stays float32 and the
    twins hold its variables, not copies."""
    pytest.importorskip("keras_hub")
    from keras_hub.src.models.deeplab_v3.deeplab_v3_layers import SpatialPyramidPooling
    from keras_hub.src.models.retinanet.prediction_head import PredictionHead

    inputs = keras.Input((8, 8, 16))
    layer = PredictionHead(output_filters=6, num_filters=16, num_conv_layers=2) if kind == "head" else \
        SpatialPyramidPooling(dilation_rates=[2], num_channels=8)
    model = keras.Model(inputs, layer(inputs))
    step = flatten(model).step(layer.name)
    converted = precision.bfloat16([step])[0].layer
    assert all(sub.compute_dtype == "bfloat16" for sub in converted._flatten_layers())
    assert all(sub.compute_dtype == "float32" for sub in layer._flatten_layers())
    assert {id(v) for v in converted.weights} == {id(v) for v in layer.weights}
    if SUPPORT != "unavailable":  # run: the sublayers it calls are the twins (a Sequential's too)
        x = np.random.default_rng(0).normal(size=(1, 8, 8, 16)).astype("float32")
        assert converted(x).dtype == "bfloat16" and layer(x).dtype == "float32"


def test_evaluate_chooses_auto_precision_alike_in_python_and_on_the_command_line(tiny_model, tmp_path, monkeypatch):
    """On a CPU with native bfloat16, `auto` keeps fp32 for all the methods evaluate measures together when one of them
    needs it (layercam), from Python as from the command line: the same request, the same numbers."""
    import json

    from PIL import Image

    from explain_cli import Explainer

    monkeypatch.setattr(precision, "native_bf16", lambda flags=None, max_isa=None: ["avx512_bf16"])
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(make_scene(rng).image).save(tmp_path / f"{i}.png")
    paths = [str(tmp_path / f"{i}.png") for i in range(2)]
    explainer = Explainer(tiny_model)
    assert explainer.precision == "bf16"  # gradcam alone would run in bf16 here
    mine = explainer.evaluate(paths, methods=("gradcam", "layercam"), steps=4).records
    result = CliRunner().invoke(cli, ["evaluate", *paths, "--model", str(tiny_model), "--methods", "gradcam,layercam",
                                      "--steps", "4", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    theirs = [json.loads(line) for line in (tmp_path / "out" / "evaluation.jsonl").read_text().splitlines()]
    key = ("image", "method", "class_index")
    assert sorted((tuple(r[k] for k in key), r["deletion_auc"], r["insertion_auc"]) for r in mine) == sorted(
        (tuple(r[k] for k in key), r["deletion_auc"], r["insertion_auc"]) for r in theirs)
