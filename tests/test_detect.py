"""explain detect: an object detector's boxes found and explained, each checked against an independent computation
(boxes by hand, the gradient target on a full tape, D-RISE in numpy, keras-hub's own decoding and suppression)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.tasks import boxes
from explain_cli.evaluation import metrics
from explain_cli.render import heatmaps as render
from explain_cli.cli.main import cli
from tests.synthetic_detector import make_scene
from tests.test_precision import AGREEMENT, SUPPORT, needs_bf16


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def iou_by_hand(box, many):
    """IoU of one xyxy box with each of many, written out again for the tests."""
    x0, y0 = np.maximum(box[0], many[:, 0]), np.maximum(box[1], many[:, 1])
    x1, y1 = np.minimum(box[2], many[:, 2]), np.minimum(box[3], many[:, 3])
    inner = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inner / (area(box) + area(many) - inner)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, Path, list]:
    """Five scenes of two or three blobs, saved at 96 × 96 (the detector takes 64: boxes are scaled back), with a
    truth CSV of their boxes in the saved images' pixels."""
    root = tmp_path_factory.mktemp("detect")
    rng = np.random.default_rng(7)
    rows, made = ["image,x0,y0,x1,y1,class"], []
    for i in range(5):
        scene = make_scene(rng)
        path = root / "scenes" / f"s{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(scene.image).resize((96, 96), Image.Resampling.NEAREST).save(path)
        for colour, (top, left, bottom, right) in scene.boxes:
            rows.append(f"{path},{left * 1.5},{top * 1.5},{right * 1.5},{bottom * 1.5},{colour}")
        made.append(scene)
    (root / "truth.csv").write_text("\n".join(rows) + "\n")
    return root / "scenes", root / "truth.csv", made


# --- boxes, worked by hand ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("box_format, expected", [
    ("xyxy", [10, 20, 30, 60]), ("yxyx", [20, 10, 60, 30]), ("xywh", [10, 20, 40, 80]),
    ("center_xywh", [-5, -10, 25, 50]), ("center_yxhw", [-10, -5, 50, 25]), ("rel_xyxy", [2000, 2000, 6000, 6000]),
])
def test_each_box_format_becomes_corners_in_pixels(box_format, expected):
    found = boxes.to_xyxy(np.array([[10.0, 20.0, 30.0, 60.0]]), box_format, height=100, width=200)
    assert found.tolist() == [expected]


def test_iou_and_suppression_by_hand():
    a, b = np.array([[0, 0, 10, 10]]), np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]])
    assert boxes.iou(a, b)[0] == pytest.approx([25 / 175, 1.0, 0.0])
    found = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    scores, classes = np.array([0.9, 0.8, 0.7, 0.2]), np.array([0, 0, 1, 0])
    # the second overlaps the first by 81/119 of their union: gone; the third is of another class; the fourth is faint
    assert boxes.nms(found, scores, classes, 0.5, 0.3, 10).tolist() == [0, 2]
    assert boxes.nms(found, scores, classes, 0.5, 0.3, 10, per_class=False).tolist() == [0]
    assert boxes.nms(found, scores, classes, 0.5, 0.0, 1).tolist() == [0]


def test_precision_recall_and_average_precision_by_hand():
    truth = {0: [(0, (0, 0, 10, 10))], 1: [(0, (0, 0, 10, 10))]}
    found = [boxes.Found(0, 0, 0.9, (0, 0, 10, 10)), boxes.Found(1, 0, 0.8, (50, 50, 60, 60)),
             boxes.Found(1, 0, 0.7, (1, 1, 10, 10))]
    result = boxes.precision_recall(found, truth)
    # ranked right, wrong, right: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; interpolated: 1/2 · 1 + 1/2 · 2/3
    assert result["map50"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert (result["precision"], result["recall"]) == (pytest.approx(2 / 3), 1.0)


# --- the targets against independent computations ------------------------------------------------------------------


@pytest.mark.parametrize("pruned", [False, True])
def test_each_boxs_target_and_gradcam_equal_a_full_tape(keras, detector_model, pruned, monkeypatch):
    """Σ IoU × class score over the predictions overlapping the box by IoU ≥ 0.5, and its Grad-CAM at `features`,
    from the whole model on one tape: the class scores made again from the layer by the class convolution's own
    kernel, before its sigmoid. Each image's head batched over its boxes, and each box's head on its own window."""
    import tensorflow as tf

    from explain_cli import Detector
    from explain_cli.tasks import detection_levels

    if pruned:
        monkeypatch.setattr(detection_levels, "PRUNED_ABOVE", 0)

    image = make_scene(np.random.default_rng(3)).image
    made = Detector(detector_model, precision="fp32")
    explained = made.explain([image])
    assert len(explained) >= 2 and (made._steps.explained["gradcam"].pruned is not None) == pruned
    model = keras.models.load_model(detector_model, compile=False)
    trunk = keras.Model(model.inputs, model.get_layer("features").output)
    scorer = model.get_layer("classes")
    x = image[None].astype("float32")
    predicted = model(x)["boxes"].numpy()[0]
    for e in explained:
        own = predicted[np.argmax(iou_by_hand(np.array(e.box), predicted))]  # the prediction it is (boxes inside)
        overlap = iou_by_hand(own, predicted)
        weights = np.where(overlap >= 0.5, overlap, 0.0).astype(np.float32)
        with tf.GradientTape() as tape:
            a = trunk(x)
            tape.watch(a)
            z = tf.reshape(tf.nn.conv2d(a, tf.convert_to_tensor(scorer.kernel), 1, "SAME") + scorer.bias, [-1, 3])
            target = tf.reduce_sum(weights * z[:, e.class_index])
        gradient = tape.gradient(target, a)[0].numpy()
        gradcam = np.maximum((a[0].numpy() * gradient.mean(axis=(0, 1))).sum(-1), 0)
        assert e.target_score == pytest.approx(float(target), rel=1e-4)
        assert np.corrcoef(e.map.ravel(), gradcam.ravel())[0, 1] >= 0.9999
        assert np.allclose(e.map, gradcam, atol=1e-4 * gradcam.max())


def _rows_of(made, batch):
    """A batch's detections as the explain step's rows: (looked, row image, row class, row weights)."""
    looked = made._steps.look(batch)
    found = [made.suppress(looked.boxes[i], looked.probabilities[i]) for i in range(len(batch))]
    images = np.repeat(np.arange(len(batch)), [len(f.classes) for f in found]).astype(np.int32)
    classes = np.concatenate([f.classes for f in found]).astype(np.int32)
    weights = np.concatenate([made.weights(looked.boxes[i], f) for i, f in enumerate(found)])
    return looked, images, classes, weights


def _same_rows(made, ours, theirs):
    assert np.allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    assert np.allclose(ours[1], theirs[1], atol=1e-5 * np.abs(theirs[1]).max())


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_the_vectorised_and_pruned_backward_passes_equal_the_tiled_one(detector_model, method, monkeypatch):
    """Each image's head once and its rows' gradients from one vectorised backward pass, and each row's head on the
    window its predictions see (a gradient method's; this head reads the layer itself, with a reach of one cell), give
    the targets and maps of the rows' heads run on copies of their images' features: rows of three images, in one
    call and in two. So small a head (one 3 × 3 convolution of 32 channels to 3) is pruned only when told to: a call
    per box would cost more than it saves."""
    from explain_cli import Detector
    from explain_cli.tasks import detection_levels

    assert Detector(detector_model, precision="fp32")._steps.explain(method).pruned is None
    monkeypatch.setattr(detection_levels, "PRUNED_ABOVE", 0)
    made = Detector(detector_model, method=method, precision="fp32", min_score=0.0, max_boxes=4)
    looked, images, classes, weights = _rows_of(
        made, np.stack([make_scene(np.random.default_rng(seed)).image for seed in (4, 5, 6)]))
    rows = made._steps.explain(method)
    tiled = rows.tiled(looked, images, classes, weights)
    for part in (slice(None), slice(0, 6), slice(6, None)):  # an image's rows split between two calls, too
        _same_rows(made, rows.by_image(looked, images[part], classes[part], weights[part]),
                   (tiled[0][part], tiled[1][part]))
        if rows.pruned is not None:
            _same_rows(made, rows.pruned(looked, images[part], classes[part], weights[part]),
                       (tiled[0][part], tiled[1][part]))
    assert rows.vectorised and len(images) == 12
    assert (rows.pruned is not None) == (method != "eigencam")  # eigencam takes no gradient


def test_a_pyramids_boxes_are_pruned_to_their_levels_and_windows_with_the_same_maps(keras):
    """keras-hub's RetinaNet, levels 3 to 5 at 128 px (maps of 16, 8 and 4 cells), one 3 × 3 convolution and the 3 ×
    3 classifier in its class head: that head's reach is 2 cells, measured on the levels that can show it (level 5's
    4 × 4 map cannot: run whole). Each box's head on its window (smaller than its level's map), then the pyramid's
    backward pass batched over the boxes, gives the targets and maps of the whole head's backward pass; so does a
    row split over levels. A head with GroupNorm reads its whole map: it is not pruned."""
    keras_hub = pytest.importorskip("keras_hub")
    from explain_cli import Detector
    from explain_cli.tasks import detection_levels

    keras.utils.set_random_seed(0)
    images = np.random.default_rng(1).integers(0, 256, (2, 128, 128, 3)).astype(np.uint8)
    made = Detector(_retinanet(keras_hub, keras, 128), min_score=0.0, max_boxes=6, precision="fp32")
    looked, rows_image, classes, weights = _rows_of(made, images)
    for method in ("gradcam", "gradcam++"):
        rows = made._steps.explain(method)
        assert rows.pruned is not None
        _same_rows(made, rows.pruned(looked, rows_image, classes, weights),
                   rows.by_image(looked, rows_image, classes, weights))
    levels = made._steps.pruning_levels
    assert sorted((level.grid[0], level.reach) for level in levels) == [(4, None), (8, 2), (16, 2)]
    assert sum(len(level.predictions) for level in levels) == made.format.predictions
    windows = [detection_levels._part(level, row, int(c)) for row, c in zip(weights, classes) for level in levels]
    assert any(w is not None and (w[0][0].stop - w[0][0].start) < 16 for w in windows)  # pruned, not whole
    assert any(sum(detection_levels._part(level, row, int(c)) is not None for level in levels) >= 2
               for row, c in zip(weights, classes))  # a box whose predictions are on two levels

    keras.utils.set_random_seed(0)
    normed = Detector(_retinanet(keras_hub, keras, 128, use_prediction_head_norm=True), min_score=0.0, max_boxes=3,
                      precision="fp32")
    assert normed._steps.explain("gradcam").pruned is None
    assert len(normed.explain(images[:1])) == 3


@needs_bf16
def test_in_bf16_the_head_computes_in_bf16_and_finds_and_explains_the_same_boxes(detector_model):
    """A detector's head (here its class and box convolutions after the cut) is much of its work, so bf16 computes it
    in bfloat16 too: the same detections (boxes to half a pixel) and maps that agree with fp32's."""
    from explain_cli import Detector

    images = [make_scene(np.random.default_rng(seed)).image for seed in range(8)]
    for method in ("gradcam", "gradcam++", "eigencam"):
        fp32, bf16 = (Detector(detector_model, method=method, precision=p) for p in ("fp32", "bf16"))
        reference, lower = fp32.explain(images), bf16.explain(images)
        assert [(e.source, e.class_index) for e in lower] == [(e.source, e.class_index) for e in reference]
        for e, f in zip(reference, lower):
            assert np.abs(np.subtract(e.box, f.box)).max() <= 0.5
            assert np.corrcoef(e.map.ravel(), f.map.ravel())[0, 1] >= AGREEMENT[SUPPORT], (method, e.source)
    head = {s.name: s.layer for s in bf16._steps.cuts[0].head_steps}
    assert head["classes"].compute_dtype == head["distances"].compute_dtype == "bfloat16"


def test_drise_equals_its_formula_in_numpy(keras, detector_model):
    """D-RISE with the run's masks: each masked image through the model, scored against each detection by
    max over predictions of IoU × cosine of the probabilities × confidence; the masks weighted by the score less its
    mean."""
    from explain_cli import Detector

    image = make_scene(np.random.default_rng(4)).image
    made = Detector(detector_model, method="drise", masks=24, cells=4, batch_size=10, precision="fp32")
    explained = made.explain([image])
    found = made.detect([image])[0][1]
    assert len(explained) == len(found) >= 2
    model = keras.models.load_model(detector_model, compile=False)
    masks = made.masks().chunk(0, 24)
    out = model(128 + (image[None].astype("float32") - 128) * masks[..., None])
    predicted, probabilities = out["boxes"].numpy(), out["scores"].numpy()
    for e, detection in zip(explained, found):
        assert all(0 < v < 64 for v in detection.box)  # inside the image: its box is the model's, unclipped
        target = detection.probabilities / np.linalg.norm(detection.probabilities)
        scores = np.array([
            np.max(iou_by_hand(np.array(detection.box), predicted[i]) * (probabilities[i] @ target)
                   / np.linalg.norm(probabilities[i], axis=1) * probabilities[i].max(axis=1))
            for i in range(len(masks))])
        expected = np.tensordot(scores - scores.mean(), masks, axes=1) / (24 * 0.5)
        assert np.allclose(e.map, expected, atol=1e-4 * np.abs(expected).max())


# --- the trained detector: maps on their own boxes, and better than random -----------------------------------------


@pytest.mark.parametrize("method, masks", [("gradcam", 0), ("drise", 2000)])
def test_every_detections_map_puts_most_of_its_energy_in_its_own_box(detector_model, method, masks):
    from explain_cli import Detector

    rng = np.random.default_rng(5)
    images = [make_scene(rng).image for _ in range(6)]
    made = Detector(detector_model, method=method, masks=masks or 1000, precision="fp32")
    explained = made.explain(images)
    assert len(explained) >= 12
    energies = [metrics.energy_in_boxes(e.heatmap(), [e.box]) for e in explained]
    peaks = [metrics.pointing_hit(e.heatmap(), [e.box], 0.0) for e in explained]
    assert min(energies) >= 0.5 and all(peaks), (method, np.round(energies, 3))


def test_evaluate_on_the_detector_beats_random(detector_model, scenes, tmp_path):
    folder, _, _ = scenes
    result = run("evaluate", folder, "--model", detector_model, "--methods", "gradcam,drise,random", "--masks", "500",
                 "--steps", "16", "-o", tmp_path, "--json", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    means = {row["method"]: row for row in map(json.loads, result.stdout.splitlines())}
    for method in ("gradcam", "drise"):
        assert means[method]["deletion_auc"]["mean"] < means["random"]["deletion_auc"]["mean"] - 0.3
        assert means[method]["insertion_auc"]["mean"] > means["random"]["insertion_auc"]["mean"]
        assert means[method]["pointing_game"]["mean"] == 1.0
    records = [json.loads(line) for line in (tmp_path / "evaluation.jsonl").read_text().splitlines()]
    assert {r["head"] for r in records} == {"detections"} and all(len(r["box"]) == 4 for r in records)
    assert "forward passes per detection" in result.stderr


# --- the command line ------------------------------------------------------------------------------------------------


def test_detect_writes_the_boxes_each_map_a_manifest_line_and_the_rows(detector_model, scenes, tmp_path):
    folder, truth, made = scenes
    result = run("detect", folder, "--model", detector_model, "-o", tmp_path, "--truth", truth)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert all(len(row) == 9 for row in rows) and len(rows) == sum(len(s.boxes) for s in made)
    for row in rows:  # image, k, class, label, score, x0, y0, x1, y1: each box on a true one, in the image's pixels
        scene = made[int(Path(row[0]).stem[1:])]
        true = np.array([[left, top, right, bottom] for c, (top, left, bottom, right) in scene.boxes
                         if c == int(row[2])]) * 1.5
        assert iou_by_hand(np.array(row[5:], float), true).max() >= 0.5 and float(row[4]) >= 0.3
    assert "precision 1.000, recall 1.000, mAP@0.5 1.000 over 5 images with true boxes" in result.stderr
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == len(rows)
    for line in lines:
        assert line["overlay"] == f"{Path(line['image']).stem}.det{line['detection']}.gradcam.{line['class_index']}-" \
                                  f"{line['label']}.jpg"
        assert (tmp_path / line["overlay"]).is_file() and (tmp_path / line["detections"]).is_file()
        assert line["layer"] == "features" and len(line["box"]) == 4
    with Image.open(tmp_path / lines[0]["overlay"]) as overlay:
        assert overlay.size == (96, 96)


def test_detect_json_rows_and_an_image_without_detections(detector_model, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (120, 120, 120)).save(blank)
    image = tmp_path / "scene.png"
    Image.fromarray(make_scene(np.random.default_rng(9)).image).save(image)
    result = run("detect", blank, image, "--model", detector_model, "-o", tmp_path / "out", "--json",
                 "--method", "eigencam")
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]  # the blank image has none to list
    assert row["image"] == str(image) and [d["k"] for d in row["predictions"]] == list(range(1, len(row["predictions"]) + 1))
    lines = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert lines[0]["image"] == str(blank) and lines[0]["detection"] is None  # its picture is still listed
    assert (tmp_path / "out" / lines[0]["detections"]).is_file()


def test_what_explain_detect_cannot_read_gets_one_line(keras, tiny_model, tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(image)
    result = run("detect", image, "--model", tiny_model, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: explain detect reads keras-hub's RetinaNet and D-FINE detectors, or a model with two outputs")
    inputs = keras.Input((32, 32, 3))
    flat = keras.layers.Flatten()(inputs)
    odd = keras.Model(inputs, {"boxes": keras.layers.Reshape((10, 4), name="boxes")(keras.layers.Dense(40)(flat)),
                               "scores": keras.layers.Reshape((12, 3), name="scores")(keras.layers.Dense(36)(flat))})
    odd.save(tmp_path / "odd.keras")
    result = run("detect", image, "--model", tmp_path / "odd.keras", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "this model's outputs: boxes (None, 10, 4), scores (None, 12, 3)" in result.stderr
    result = run("detect", image, "--model", tmp_path / "odd.keras", "--boxes-output", "nope", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "unknown output 'nope'" in result.output


def test_several_outputs_that_could_be_boxes_are_named(keras, tmp_path):
    from explain_cli import Detector
    from explain_cli.errors import BadArgument

    inputs = keras.Input((32, 32, 3))
    grid = keras.layers.Conv2D(4, 3, strides=4, padding="same", name="grid")(inputs)
    outputs = {name: keras.layers.Reshape((64, 4), name=name)(keras.layers.Conv2D(4, 1, name=f"{name}_conv")(grid))
               for name in ("boxes", "anchors")}
    outputs["scores"] = keras.layers.Reshape((64, 2), name="scores")(
        keras.layers.Conv2D(2, 1, activation="sigmoid", name="classes")(grid))
    model = keras.Model(inputs, outputs)
    with pytest.raises(BadArgument, match="several outputs could be"):
        Detector(model)
    made = Detector(model, boxes_output="boxes", min_score=0.0, max_boxes=3)
    assert made.format.scores_output == "scores" and made.format.activation == "sigmoid"
    assert made.layer == "grid" and len(made.explain([np.zeros((32, 32, 3), np.uint8)])) == 3


# --- keras-hub's RetinaNet and D-FINE ---------------------------------------------------------------------------------


def _retinanet(keras_hub, keras, size: int, free: bool = False, **options):
    """A small RetinaNet: a ResNet of basic blocks, pyramid levels 3 to 5, one convolution per head; `free`: taking
    any size, with no preprocessor (fed at --input-size, its pyramid's layers left unbuilt when saved)."""
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 32, 32, 32],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=5, use_p5=False,
                                                  image_shape=(None, None, 3) if free else (size, size, 3),
                                                  name="retina_net_backbone")  # not _1 after others made here
    converter = keras_hub.layers.RetinaNetImageConverter(image_size=(size, size), scale=1 / 255.0)
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=3, bounding_box_format="yxyx", pre_logits_num_conv_layers=1, **options,
        preprocessor=None if free else keras_hub.models.RetinaNetObjectDetectorPreprocessor(image_converter=converter))
    # keras-hub starts the box head's bias at the class head's prior (−4.6): untrained boxes would be 1 % of their
    # anchors, slivers whose suppression no two implementations agree on. Small deltas keep them near their anchors.
    kernel, bias = detector.box_head.weights[-2:]
    kernel.assign(kernel.numpy() * 0.05)
    bias.assign(np.zeros(bias.shape))
    return detector


def _dfine(keras_hub, keras, size: int):
    """A small D-FINE: a two-stage HGNetV2, one encoder and one decoder layer, ten queries."""
    from keras_hub.src.models.d_fine.d_fine_backbone import DFineBackbone
    from keras_hub.src.models.d_fine.d_fine_image_converter import DFineImageConverter
    from keras_hub.src.models.d_fine.d_fine_object_detector import DFineObjectDetector
    from keras_hub.src.models.d_fine.d_fine_object_detector_preprocessor import DFineObjectDetectorPreprocessor

    stages = ["stage1", "stage2"]
    hgnet = keras_hub.models.HGNetV2Backbone(
        stem_channels=[3, 8, 8], stackwise_stage_filters=[[8, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, False], depths=[1, 1],
        hidden_sizes=[16, 32], embedding_size=8, use_learnable_affine_block=True, hidden_act="relu",
        image_shape=(size, size, 3), out_features=stages)
    backbone = DFineBackbone(
        backbone=hgnet, decoder_in_channels=[16, 16], encoder_hidden_dim=16, num_denoising=0, num_labels=3,
        hidden_dim=16, learn_initial_query=False, num_queries=10, anchor_image_size=(size, size), feat_strides=[4, 8],
        num_feature_levels=2, encoder_in_channels=[16, 32], encode_proj_layers=[1], num_attention_heads=2,
        encoder_ffn_dim=32, num_encoder_layers=1, hidden_expansion=0.5, depth_multiplier=0.5, eval_idx=-1,
        num_decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32, decoder_method="default",
        decoder_n_points=[2, 2], lqe_hidden_dim=16, num_lqe_layers=1, out_features=stages, image_shape=(size, size, 3),
        seed=0, name="d_fine_backbone")
    converter = DFineImageConverter(bounding_box_format="yxyx", image_size=(size, size), scale=1 / 255.0)
    return DFineObjectDetector(backbone=backbone, num_classes=3, bounding_box_format="yxyx",
                               preprocessor=DFineObjectDetectorPreprocessor(image_converter=converter))


HUB = {"retinanet": (_retinanet, 128, "retina_net_backbone/backbone/stack3_block0_out"),
       "dfine": (_dfine, 64, "d_fine_backbone/encoder_input_proj_bn_1")}


@pytest.fixture(scope="module", params=list(HUB))
def hub_detector(request, tmp_path_factory) -> tuple[str, Path, int]:
    """keras-hub's RetinaNet and D-FINE, small, random weights, saved with their preprocessors (whose image converters
    scale pixels by 1/255): (kind, file, input size)."""
    keras_hub = pytest.importorskip("keras_hub")
    import keras

    keras.utils.set_random_seed(0)
    make, size, _ = HUB[request.param]
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.keras"
    make(keras_hub, keras, size).save(path)
    return request.param, path, size


def test_keras_hub_detections_are_their_own_and_targets_their_logits(keras, hub_detector):
    """Our decoding (a RetinaNet's anchor deltas, D-FINE's query boxes) and suppression at the model's own IoU give
    keras-hub's own detections (its decode_predictions, its decoder's score floor lowered to ours); each box's target
    is Σ IoU × its class logit, read from the whole model's outputs."""
    from keras_hub.layers import NonMaxSuppression

    from explain_cli import Detector

    kind, path, size = hub_detector
    model = keras.models.load_model(path, compile=False)
    model.prediction_decoder = NonMaxSuppression(bounding_box_format="yxyx", from_logits=True, iou_threshold=0.5,
                                                 confidence_threshold=0.3, max_detections=100)
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    raw = model(model.preprocessor.image_converter(images.astype("float32")))
    theirs = {k: np.asarray(v) for k, v in model.decode_predictions(raw, images.astype("float32")).items()}
    logits = np.asarray(raw["cls_logits" if kind == "retinanet" else "logits"])
    made = Detector(path, min_score=0.3, max_boxes=100, precision="fp32")
    assert made.format.per_class is False and made.format.iou == 0.5
    looked = made._steps.look(images)
    for i in range(2):
        found = made.suppress(looked.boxes[i], looked.probabilities[i])
        count = int(theirs["num_detections"][i])
        assert len(found.scores) == count > 0
        assert np.allclose(np.sort(found.scores), np.sort(theirs["confidence"][i][:count]), atol=1e-5)
        own = theirs["boxes"][i][:count][:, [1, 0, 3, 2]]  # yxyx to xyxy
        assert all(np.abs(own - box).max(axis=1).min() < 1e-2 for box in found.boxes)
        explained = made.explain([images[i]])[:3]
        for e, box, cls in zip(explained, found.boxes, found.classes):
            overlap = iou_by_hand(box, looked.boxes[i])
            expected = float(np.sum(np.where(overlap >= 0.5, overlap, 0) * logits[i][:, cls]))
            assert e.target_score == pytest.approx(expected, rel=1e-3, abs=1e-3)
    # RetinaNet's head vectorises; pfor has no rule for the ScatterNd in D-FINE's decoder, so its rows are tiled
    assert made._steps.explained["gradcam"].vectorised == (kind == "retinanet")


def test_keras_hub_detectors_run_end_to_end_with_their_preprocessors(hub_detector, tmp_path):
    kind, path, size = hub_detector
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (90, 140, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.jpg")
    for method in ("gradcam", "drise") if kind == "retinanet" else ("gradcam",):  # D-FINE's passes are slow to trace
        result = run("detect", tmp_path / "0.jpg", tmp_path / "1.jpg", "--model", path, "--min-score", "0.3",
                     "--max-boxes", "2", "--method", method, "--masks", "40", "-o", tmp_path / method, "-v")
        assert result.exit_code == 0, result.output
        assert ("gradcam at layer " + HUB[kind][2] + " (default)" if method == "gradcam" else "drise 40 masks") \
            in result.stderr
        assert ("anchor_deltas" if kind == "retinanet" else "rel_center_xywh") in result.stderr
        rows = [line.split("\t") for line in result.stdout.splitlines()]
        assert len(rows) == 4 and all(0 <= float(v) <= 140 for row in rows for v in row[5:])
        lines = [json.loads(line) for line in (tmp_path / method / "manifest.jsonl").read_text().splitlines()]
        assert len(lines) == 4 and all((tmp_path / method / line["overlay"]).is_file() for line in lines)


# --- the library ------------------------------------------------------------------------------------------------------


def test_the_library_hands_out_detections_and_explanations_with_their_boxes(detector_model):
    from explain_cli import Detection, Detector

    scene = make_scene(np.random.default_rng(11))
    made = Detector(detector_model)
    ((key, found),) = made.detect([scene.image])
    assert key == 0 and all(isinstance(d, Detection) for d in found) and [d.rank for d in found] == [1, 2, 3][:len(found)]
    explained = made.explain([scene.image])
    assert [(e.rank, e.class_index, e.box) for e in explained] == [(d.rank, d.class_index, d.box) for d in found]
    e = explained[0]
    plain = np.asarray(render.overlay_on(render.backdrop(e.image, 0.4), render.normalise(e.map)))
    drawn = np.asarray(e.overlay())
    x0, y0 = int(e.box[0]), int(e.box[1])
    assert (drawn[y0 + 3, x0] != plain[y0 + 3, x0]).any()  # its box's left side is drawn
    assert (drawn[63, 63] == plain[63, 63]).all() or not (x0 <= 63 <= e.box[2])
    evaluation = made.evaluate([scene.image], methods=("gradcam", "random"), steps=8)
    assert {r["detection"] for r in evaluation.records} == set(range(1, len(found) + 1))
    assert evaluation.summary("gradcam").means["deletion_auc"] < evaluation.summary("random").means["deletion_auc"]


def test_layers_marks_the_detectors_default_and_evaluate_refuses_classifier_options(detector_model, scenes, tmp_path):
    result = run("layers", "--model", detector_model)
    assert result.exit_code == 0, result.output
    marked = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("*")]
    assert marked == ["features"]
    assert {line.split()[1] for line in result.stdout.splitlines() if line.startswith(">")} == {"boxes", "scores"}
    folder, truth, _ = scenes
    result = run("evaluate", folder, "--model", detector_model, "--boxes", truth, "-o", tmp_path)
    assert result.exit_code == 2 and "a detector's detections are measured against their own boxes" in result.output
    result = run("evaluate", folder, "--model", detector_model, "--methods", "scorecam", "-o", tmp_path)
    assert result.exit_code == 2 and "scorecam does not explain detections" in result.output


def test_sanity_randomises_a_copy_from_the_head_down_holding_each_detection(detector_model, scenes, tmp_path):
    """--sanity on a detector: a copy randomised in stages from its outputs down, each detection explained again with
    its box, class and matched predictions held. With only the head random the features are the trained ones, so
    EigenCAM (the features alone) is unchanged and Grad-CAM (the head's gradient) is not; with every layer random
    neither is like its trained map; the random control is; and the user's detector is untouched."""
    from explain_cli import Detector

    folder, _, made = scenes
    result = run("evaluate", folder, "--model", detector_model, "--methods", "gradcam,eigencam,random", "--steps", "4",
                 "--sanity", "--sanity-stages", "3", "--sanity-figures", "1", "-o", tmp_path, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert "sanity: mean Spearman of each method's maps with the trained model's" in result.stderr
    records = [json.loads(line) for line in (tmp_path / "sanity.jsonl").read_text().splitlines()]
    detections = sum(len(s.boxes) for s in made)  # the trained detector finds every blob of the five scenes
    assert len(records) == detections * 3 * 3 and {r["layers_randomised"] for r in records} == {1, 4, 6}
    by = {(r["image"], r["detection"], r["method"], r["stage"]): r["spearman"] for r in records}
    for (image, k, method, stage), rho in by.items():
        if method == "random" or (method == "eigencam" and stage == 1):
            assert rho == pytest.approx(1.0), (image, k, method, stage)
    assert np.mean([rho for (_, _, m, stage), rho in by.items() if m == "gradcam" and stage == 1]) < 0.5
    assert max(rho for (_, _, m, stage), rho in by.items() if m != "random" and stage == 3) < 0.9
    figures = [r["figure"] for r in records if "figure" in r]
    assert len(figures) == 1 and (tmp_path / figures[0]).is_file()
    detector = Detector(detector_model, precision="fp32")
    image = made[0].image
    before = detector.explain([image])
    evaluation = detector.evaluate([image], methods=("gradcam",), steps=4, sanity=True, sanity_stages=2)
    assert len(evaluation.sanity) == len(before) * 2
    assert all(np.array_equal(a.map, b.map) for a, b in zip(before, detector.explain([image])))


def test_the_report_shows_each_images_boxes(detector_model, scenes, tmp_path):
    from explain_cli.io import report

    folder, _, made = scenes
    result = run("detect", folder, "--model", detector_model, "-o", tmp_path, "--report")
    assert result.exit_code == 0, result.output
    cards = report.cards(tmp_path)
    assert len(cards) == 5
    for card, scene in zip(cards, made):
        assert card.detections == f"{Path(card.image).stem}.detections.jpg"
        assert [box[0] for box in card.boxes] == list(range(1, len(scene.boxes) + 1))
        assert [e["detection"] for e in card.explanations] == [box[0] for box in card.boxes]


def test_an_objectness_output_multiplies_the_class_probabilities(keras, tmp_path):
    """A YOLO-style head: boxes, class sigmoids (keras.ops.sigmoid on the model's tensor) and an objectness sigmoid
    per cell; a detection's score is its class probability times its objectness, and its maps (gradient and D-RISE)
    are made."""
    from explain_cli import Detector
    from explain_cli.errors import BadArgument

    keras.utils.set_random_seed(3)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    grid = layers.Conv2D(8, 3, strides=4, padding="same", activation="relu", name="grid")(layers.Rescaling(1 / 255)(inputs))
    outputs = {
        "boxes": layers.Reshape((64, 4), name="boxes")(layers.Conv2D(4, 1, name="box_conv")(grid) * 10 + 16),
        "scores": keras.ops.sigmoid(layers.Reshape((64, 3))(layers.Conv2D(3, 1, name="cls")(grid))),  # an op ends it
        "objectness": layers.Reshape((64, 1), name="objectness")(
            layers.Conv2D(1, 1, activation="sigmoid", name="obj")(grid)),
    }
    model = keras.Model(inputs, outputs)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with pytest.raises(BadArgument, match="several outputs could be"):
        Detector(model)
    made = Detector(model, objectness_output="objectness", min_score=0.0, max_boxes=4, precision="fp32")
    out = model(image[None].astype("float32"))
    confidence = (out["scores"].numpy()[0] * out["objectness"].numpy()[0])
    found = made.detect([image])[0][1]
    assert len(found) == 4 and found[0].score == pytest.approx(float(confidence.max()), abs=1e-5)  # the best survives
    assert all(np.isclose(confidence[:, d.class_index], d.score, atol=1e-5).any() for d in found)
    assert 0.05 < found[0].score < float(out["scores"].numpy().max()) - 0.05  # not the class probability alone
    assert len(Detector(model, objectness_output="objectness", method="drise", masks=16, min_score=0.0,
                        max_boxes=2).explain([image])) == 2
    model.save(tmp_path / "yolo.keras")
    Image.fromarray(image).save(tmp_path / "x.png")
    result = run("evaluate", tmp_path / "x.png", "--model", tmp_path / "yolo.keras", "--objectness-output",
                 "objectness", "--min-score", "0", "--max-boxes", "2", "--steps", "4", "-o", tmp_path / "eval",
                 "--precision", "fp32")
    assert result.exit_code == 0, result.output  # explain evaluate reads a detector's outputs as explain detect does
    records = [json.loads(line) for line in (tmp_path / "eval" / "evaluation.jsonl").read_text().splitlines()]
    assert sorted((r["detection"], r["method"]) for r in records) == [(1, "gradcam"), (1, "random"), (2, "gradcam"),
                                                                      (2, "random")]
    assert records[0]["score"] == pytest.approx(found[int(records[0]["detection"]) - 1].score, abs=1e-5)
    result = run("evaluate", tmp_path / "x.png", "--model", tmp_path / "yolo.keras", "--objectness-output",
                 "objectness", "--output", "scores", "-o", tmp_path / "eval")
    assert result.exit_code == 2 and "--objectness-output reads an object detector's outputs, and --output" in \
        result.output
