"""explain segment: a segmentation model's class explained over a region (Seg-Grad-CAM): the map equals a full tape of
Σ over the region of the class's pre-activation scores, for a U-Net built here and keras-hub's DeepLabV3 and SegFormer; on a trained
segmenter it lands on the class's own pixels; --region and --region-masks select what they say; the files, stdout and IoU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadArgument, Explainer
from explain_cli.cli.main import cli
from tests.synthetic import COLOURS, make_colour_blobs

LABELS = ("background", *COLOURS)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def unet(keras, seed: int = 6):
    """A U-Net built here (random weights, never trained), ending in a per-pixel softmax over 3 classes."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    down = layers.Conv2D(8, 3, padding="same", activation="relu", name="down")(x)
    bottom = layers.Conv2D(16, 3, padding="same", activation="relu", name="bottom")(layers.MaxPooling2D()(down))
    up = layers.Conv2DTranspose(8, 2, strides=2, name="up")(bottom)
    joined = layers.Conv2D(8, 3, padding="same", activation="relu", name="joined")(layers.Concatenate()([up, down]))
    outputs = layers.Conv2D(3, 1, activation="softmax", name="pixels")(joined)
    return keras.Model(inputs, outputs, name="unet")


def blocky(n: int, size: int = 32, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size // 8, size // 8, 3), dtype=np.uint8).repeat(8, axis=1).repeat(8, axis=2)


def seg_gradcam_by_tape(keras, features_and_logits, x: np.ndarray, classes: list[int], regions=None) -> np.ndarray:
    """Grad-CAM of Σ_{(i,j) in R} logit[i, j, c] from one tape over the forward pass; R where c is the argmax, or
    `regions` (n, h, w)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        activations, logits = features_and_logits(tf.constant(x, tf.float32))
        if regions is None:
            region = tf.one_hot(tf.argmax(logits, -1), logits.shape[-1])
            region = tf.stack([region[i, ..., c] for i, c in enumerate(classes)])
        else:
            region = tf.constant(regions, tf.float32)
        chosen = tf.stack([logits[i, ..., c] for i, c in enumerate(classes)])
        score = tf.reduce_sum(tf.stop_gradient(region) * chosen)
    gradients = tape.gradient(score, activations).numpy()
    return np.maximum((gradients.mean(axis=(1, 2), keepdims=True) * activations.numpy()).sum(-1), 0.0)


def close(actual, expected) -> None:
    scale = np.abs(expected).max()
    assert scale > 0, "an all-zero reference proves nothing"
    np.testing.assert_allclose(actual, expected, atol=2e-4 * scale)


def unet_reference(keras, model, layer: str):
    """(the layer's output, the pixels' pre-softmax logits) by hand: the last 1×1 convolution's own weights."""
    multi = keras.Model(model.input, [model.get_layer(layer).output, model.get_layer("joined").output])
    kernel, bias = (w.numpy() for w in model.get_layer("pixels").weights)

    def run_(x):
        activations, joined = multi(x)
        return activations, joined @ kernel[0, 0] + bias

    return run_


def test_a_unet_built_here_equals_a_full_tape_of_its_class_summed_over_where_it_is_predicted(keras):
    model = unet(keras)
    explainer = Explainer(model, precision="fp32")
    assert explainer.head.kind == "pixels" and explainer.layer == "joined"  # the last feature map before the output
    images = blocky(2)
    explained = explainer.explain(images, top_k=2, )
    assert len(explained) >= 2
    reference = unet_reference(keras, model, "joined")
    for e in explained:
        expected = seg_gradcam_by_tape(keras, reference, images[e.source:e.source + 1], [e.class_index])
        close(e.map, expected[0])
    _, logits = reference(images.astype("float32"))
    predicted = np.argmax(logits.numpy(), -1)
    for e in explained:  # the region's share and the class's mean probability over it, as numpy has them
        assert e.share == pytest.approx(np.mean(predicted[e.source] == e.class_index), abs=1e-6)
        probability = model.predict(images[e.source:e.source + 1].astype("float32"), verbose=0)[0, ..., e.class_index]
        assert e.mean_probability == pytest.approx(probability[predicted[e.source] == e.class_index].mean(), rel=1e-4)


def test_a_box_or_a_mask_is_the_region_instead(keras):
    model = unet(keras)
    explainer = Explainer(model, precision="fp32")
    images = blocky(1)
    reference = unet_reference(keras, model, "joined")
    box = np.zeros((1, 32, 32), np.float32)
    box[0, 4:12, 8:24] = 1.0  # x0=8, y0=4, x1=24, y1=12 in this 32 × 32 image's pixels
    (e,) = explainer.explain(images, classes=1, region=(8, 4, 24, 12))
    close(e.map, seg_gradcam_by_tape(keras, reference, images, [1], box)[0])
    mask = np.zeros((32, 32), bool)
    mask[20:30, 2:9] = True
    (m,) = explainer.explain(images, classes=2, region={0: mask})
    close(m.map, seg_gradcam_by_tape(keras, reference, images, [2], mask[None].astype(np.float32))[0])
    with pytest.raises(BadArgument, match="x1 must be above x0"):
        explainer.explain(images, region=(8, 4, 2, 12))


def deeplab(keras_hub, keras):
    """keras-hub's DeepLabV3 on a small ResNet, 64 × 64, three classes."""
    keras.utils.set_random_seed(3)
    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64, 64],
        stackwise_num_blocks=[1, 1, 1], stackwise_num_strides=[1, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(64, 64, 3))
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=resnet, low_level_feature_key="P2", spatial_pyramid_pooling_key="P4", dilation_rates=[6, 12],
        upsampling_size=4, projection_filters=16, image_shape=(64, 64, 3))
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=3)


def segformer(keras_hub, keras):
    """keras-hub's SegFormer on a small MiT, 64 × 64, three classes."""
    keras.utils.set_random_seed(5)
    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1, 1, 1], num_layers=4, layerwise_num_heads=[1, 1, 1, 2], layerwise_sr_ratios=[4, 2, 1, 1],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3, 3, 3], layerwise_strides=[4, 2, 2, 2],
        hidden_dims=[8, 16, 24, 32], image_shape=(64, 64, 3))
    backbone = keras_hub.models.SegFormerBackbone(image_encoder=encoder, projection_filters=16,
                                                   name="seg_former_backbone")  # not _1 after others made here
    return keras_hub.models.SegFormerImageSegmenter(backbone=backbone, num_classes=3)


def test_keras_hubs_deeplab_v3_saved_as_a_file_equals_a_full_tape(keras, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    path = tmp_path / "deeplab.keras"
    deeplab(keras_hub, keras).save(path)
    explainer = Explainer(path, precision="fp32")
    assert explainer.head.kind == "pixels"
    images = blocky(1, 64)
    weights = [w.copy() for w in explainer.model.get_weights()]
    explained = explainer.explain(images, top_k=2)
    # Its atrous pooling calls BatchNorm and Dropout with no `training` of its own: in inference mode all the same
    # (the model's own predict), and its statistics untouched.
    assert all(np.array_equal(a, b) for a, b in zip(weights, explainer.model.get_weights()))
    probabilities = explainer.model.predict(images.astype("float32"), verbose=0)
    assert explained[0].share == pytest.approx(np.mean(np.argmax(probabilities[0], -1) == explained[0].class_index))
    model = explainer.model
    layer = explainer.layer.split("/")
    inner = model.get_layer(layer[0])
    multi_inner = keras.Model(inner.input, [inner.get_layer(layer[1]).output, inner.output])
    head = model.layers[-1]  # the 1×1 convolution of logits (no activation)

    def reference(x):
        activations, features = multi_inner(x, training=False)
        return activations, head(features)

    for e in explained:
        close(e.map, seg_gradcam_by_tape(keras, reference, images, [e.class_index])[0])


def test_keras_hubs_segformer_saved_as_a_file_equals_a_full_tape_at_its_fused_decoder(keras, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    path = tmp_path / "segformer.keras"
    segformer(keras_hub, keras).save(path)
    explainer = Explainer(path, precision="fp32")
    # Its class scores are made at a quarter of the input's size, then resized to it: neither the scoring convolution
    # nor the resize (nor the dropout before them) is the default; the decoder's fused features are.
    model = explainer.model
    fused = model.get_layer("seg_former_backbone")  # its output is that activation's
    fuse = fused.linear_fuse  # Sequential: 1×1 convolution, BatchNorm, ReLU
    assert explainer.head.kind == "pixels" and explainer.layer == f"{fused.name}/{fuse.name}/{fuse.layers[-1].name}"
    score, resize = model.layers[-2], model.layers[-1]

    def reference(x):
        activations = fused(x, training=False)
        return activations, resize(score(activations))

    images = blocky(1, 64)
    explained = explainer.explain(images, top_k=3)
    expected = [seg_gradcam_by_tape(keras, reference, images, [e.class_index])[0] for e in explained]
    assert sum(np.abs(m).max() > 0 for m in expected) >= 2  # random weights: a class's map may be all negative
    for e, reference_map in zip(explained, expected):
        np.testing.assert_allclose(e.map, reference_map, atol=2e-4 * max(np.abs(m).max() for m in expected))


def test_on_a_trained_segmenter_a_class_map_lands_on_that_class(segmenter_model):
    rng = np.random.default_rng(44)
    scenes = [make_colour_blobs(rng) for _ in range(12)]
    explained = Explainer(segmenter_model, labels=LABELS, precision="fp32").explain(
        [s.image for s in scenes], classes=[1, 2, 3])
    energies = []
    for e in explained:
        truth = scenes[e.source].mask == e.class_index
        if not truth.any() or e.share < 0.01:
            continue
        heat = e.heatmap()
        energies.append(heat[truth].sum() / max(heat.sum(), 1e-9))
    assert len(energies) >= 10 and np.mean(energies) >= 0.5, energies


def test_segment_from_the_command_line(segmenter_model, tmp_path):
    rng = np.random.default_rng(45)
    folder, truth, masks = tmp_path / "in", tmp_path / "truth", tmp_path / "masks"
    for d in (folder, truth, masks):
        d.mkdir()
    scenes = [make_colour_blobs(rng) for _ in range(3)]
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(folder / f"{i}.png")
        Image.fromarray(scene.mask).save(truth / f"{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    out = tmp_path / "out"
    result = run("segment", folder, "--model", segmenter_model, "--labels", labels, "--truth-masks", truth, "-o", out,
                 "--precision", "fp32", "--report")
    assert result.exit_code == 0, result.output
    import re

    cards = json.loads(re.search(r'id="explain-data">(.*?)</script>', (out / "report.html").read_text(), re.S)
                       .group(1))["cards"]
    assert len(cards) == 3 and all((out / c["segmentation_thumb"]).is_file() for c in cards)  # shown on each card
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["segmentation"] for r in records} == {f"{i}.segmentation.png" for i in range(3)}
    for name in {r["segmentation"] for r in records} | {r["overlay"] for r in records if r["overlay"]}:
        assert (out / name).is_file()
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert all(len(row) == 5 for row in rows) and rows
    for row in rows:  # image, class, label, pixel share, mean probability; one row per class explained
        record = next(r for r in records if r["image"] == row[0] and r["class_index"] == int(row[1]))
        assert row[2] == LABELS[int(row[1])] == record["label"]
        assert float(row[3]) == pytest.approx(record["region_share"], abs=1e-6) and float(row[3]) >= 0.01
        assert float(row[4]) == pytest.approx(record["mean_probability"], abs=1e-6)
    assert Image.open(out / "0.segmentation.png").size[0] == 64  # a small image is drawn at its own size
    # the IoU in the summary, against numpy's on the same predictions
    explainer = Explainer(segmenter_model, labels=LABELS, precision="fp32")
    predicted = np.argmax(explainer.model.predict(np.stack([s.image for s in scenes]).astype("float32"), verbose=0), -1)
    both = [sum(((p == c) & (s.mask == c)).sum() for p, s in zip(predicted, scenes)) for c in range(4)]
    either = [sum(((p == c) | (s.mask == c)).sum() for p, s in zip(predicted, scenes)) for c in range(4)]
    mean_iou = np.mean([b / e for b, e in zip(both, either) if e])
    assert f"mean IoU {mean_iou:.3f} over 3 images with true masks" in result.stderr
    # --region-masks (given by its old name, --masks, which says so): each image's own region; an image without one
    # is told so
    Image.fromarray((scenes[0].mask > 0).astype(np.uint8) * 255).save(masks / "0.png")
    masked = run("segment", folder, "--model", segmenter_model, "--labels", labels, "--masks", masks, "--class", "1",
                 "-o", tmp_path / "masked", "--precision", "fp32")
    assert masked.exit_code == 0, masked.output
    assert "note: segment's --masks DIR is now --region-masks DIR" in masked.stderr
    assert f"warning: {folder / '1.png'}: no mask for it under --region-masks: its region is empty" in masked.stderr


def test_segment_needs_a_segmentation_model(tiny_model, tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    result = run("segment", tmp_path / "a.png", "--model", tiny_model, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "tiny.keras outputs classes, not classes per pixel: explain segment reads a segmentation model" in " ".join(
        result.stderr.split())
    both = run("segment", tmp_path / "a.png", "--model", tiny_model, "--region", "0,0,4,4", "--region-masks", tmp_path)
    assert both.exit_code == 2 and "--region and --region-masks are exclusive" in both.stderr
    unnamed = run("segment", tmp_path / "a.png")  # not the classifier every other command defaults to
    assert unnamed.exit_code == 2 and "explain segment needs a segmentation model: --model FILE" in unnamed.stderr


def test_evaluate_on_a_segmenter_scores_a_class_by_its_mean_probability_over_its_region(segmenter_model, tmp_path):
    """Deletion and insertion of the class's mean probability over where the unperturbed image has it; the pointing
    game and the energy against that region. On the trained segmenter, Grad-CAM beats the random control on all."""
    rng = np.random.default_rng(46)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(make_colour_blobs(rng, most=1).image).save(folder / f"{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    result = run("evaluate", folder, "--model", segmenter_model, "--labels", labels, "--steps", "8", "--class", "red",
                 "--class", "green", "--class", "blue", "-o", tmp_path / "out", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    rows = {line.split("\t")[0]: [float(v) if v else None for v in line.split("\t")[1:]]
            for line in result.stdout.splitlines()}
    gradcam, random = rows["gradcam"], rows["random"]
    assert gradcam[4] is not None and gradcam[5] is not None  # pointing and energy, against the region
    records = [json.loads(line) for line in (tmp_path / "out" / "evaluation.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["method"] == "gradcam")
    # the unperturbed point of a curve is the class's mean probability over its region
    explainer = Explainer(segmenter_model, labels=LABELS, precision="fp32")
    image = np.asarray(Image.open(folder / Path(first["image"]).name))
    probability = explainer.model.predict(image[None].astype("float32"), verbose=0)[0]
    region = np.argmax(probability, -1) == first["class_index"]
    expected = probability[..., first["class_index"]][region].mean() if region.any() else 0.0
    assert first["deletion_curve"][0] == pytest.approx(expected, abs=1e-4)
    assert gradcam[1] > random[1] and gradcam[4] >= random[4] and gradcam[5] > random[5]
