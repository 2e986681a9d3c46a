"""Every task through one shape: `explain_cli.load` makes a model's entry, and its predict, explain, layers and the
callback give what the command line prints, for a classifier, a tagger, a segmenter and a detector."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import explain_cli
from explain_cli import BadArgument, Detector, Explainer, load
from explain_cli.cli.main import cli
from tests.synthetic import COLOURS, make_colour_blobs, make_scene
from tests.synthetic_detector import make_scene as make_detector_scene

SEGMENT_LABELS = ("background", *COLOURS)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("fixture, entry, kind", [("tiny_model", Explainer, "classes"),
                                                  ("multilabel_model", Explainer, "labels"),
                                                  ("segmenter_model", Explainer, "pixels"),
                                                  ("detector_model", Detector, None)])
def test_load_reads_what_a_model_is_and_makes_its_entry(request, fixture, entry, kind):
    made = load(request.getfixturevalue(fixture), precision="fp32")
    assert type(made) is entry
    if kind is not None:
        assert made.head.kind == kind
    assert any(layer.default for layer in made.layers())  # the same verbs for each
    assert all(layer.detail for layer in made.layers())


def test_load_refuses_what_cannot_be_made(tiny_model, detector_model):
    with pytest.raises(BadArgument, match=r"^min_score is not an option for a model that is no detector \(Explainer\)$"):
        load(tiny_model, min_score=0.5)
    with pytest.raises(BadArgument, match=r"^tiny.keras outputs classes, not classes per pixel"):
        load(tiny_model, task="segment")
    with pytest.raises(BadArgument, match=r"^task is one of auto, classify, segment, detect, not 'boxes'$"):
        load(tiny_model, task="boxes")
    with pytest.raises(BadArgument, match=r"^weights is not an option for an object detector \(Detector\)$"):
        load(detector_model, weights="imagenet")
    with pytest.raises(BadArgument, match=r"^tiny.keras outputs classes, not classes per pixel: true masks"):
        load(tiny_model).predict(np.zeros((1, 64, 64, 3), np.uint8), truth={0: np.zeros((64, 64), np.uint8)})


def test_each_explanation_says_what_it_explains(tiny_model, multilabel_model):
    rng = np.random.default_rng(3)
    image = make_scene(rng).image
    (one,) = load(tiny_model, precision="fp32").explain([image])
    assert one.target == explain_cli.Target("class", one.class_index, one.label)
    several = load(multilabel_model, precision="fp32").explain([image], top_k=2)
    assert several and {e.target.kind for e in several} == {"label"}


def test_a_segmenters_prediction_is_what_explain_segment_prints(segmenter_model, keras, tmp_path):
    rng = np.random.default_rng(45)
    folder, truth = tmp_path / "in", tmp_path / "truth"
    folder.mkdir(), truth.mkdir()
    scenes = [make_colour_blobs(rng) for _ in range(3)]
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(folder / f"{i}.png")
        Image.fromarray(scene.mask).save(truth / f"{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(SEGMENT_LABELS) + "\n")
    printed = run("segment", folder, "--model", segmenter_model, "--labels", labels, "--truth-masks", truth,
                  "-o", tmp_path / "out", "--precision", "fp32")
    assert printed.exit_code == 0, printed.output

    made = load(segmenter_model, labels=SEGMENT_LABELS, precision="fp32")
    predicted = made.predict(folder, truth=truth)
    assert all(isinstance(p, explain_cli.Segmentation) for p in predicted)
    rows = sorted((row[0], int(row[1]), row[2], round(float(row[3]), 4), round(float(row[4]), 4))
                  for row in (line.split("\t") for line in printed.stdout.splitlines()))
    mine = sorted((p.source, r.class_index, r.label, round(r.probability, 4), round(r.mean_probability, 4))
                  for p in predicted for r in p.predictions)
    assert mine == rows  # image, class, label, share of the pixels, mean probability: one per class present
    shown = re.search(r"mean IoU (\d\.\d{3}) over 3 images with true masks", printed.stderr).group(1)
    assert f"{np.nanmean(explain_cli.ious(predicted)):.3f}" == shown
    # the class map and the IoU against numpy's, on the model's own output
    model = keras.models.load_model(segmenter_model, compile=False)
    argmax = np.argmax(model.predict(np.stack([s.image for s in scenes]).astype("float32"), verbose=0), -1)
    for p, expected, scene in zip(sorted(predicted, key=lambda p: p.source), argmax, scenes):
        np.testing.assert_array_equal(p.class_map, expected)
        union = [((expected == c) | (scene.mask == c)).sum() for c in range(4)]
        both = [((expected == c) & (scene.mask == c)).sum() for c in range(4)]
        np.testing.assert_allclose(p.iou, [b / u if u else np.nan for b, u in zip(both, union)])
    explained = made.explain(folder)
    assert {e.target.kind for e in explained} == {"region"}
    assert {(e.source, e.class_index) for e in explained} == {(p.source, r.class_index) for p in predicted
                                                              for r in p.predictions}


def test_a_detectors_prediction_and_maps_are_what_explain_detect_prints(detector_model, tmp_path):
    rng = np.random.default_rng(8)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(make_detector_scene(rng).image).save(folder / f"{i}.png")
    printed = run("detect", folder, "--model", detector_model, "-o", tmp_path / "out", "--precision", "fp32")
    assert printed.exit_code == 0, printed.output

    made = load(detector_model, precision="fp32")
    predicted = made.predict(folder)
    assert all(isinstance(p, explain_cli.Detections) for p in predicted)
    mine = [f"{p.source}\t{d.rank}\t{d.class_index}\t{d.label}\t{d.score:.6f}\t" + "\t".join(f"{v:.1f}" for v in d.box)
            for p in predicted for d in p.predictions]
    assert mine == printed.stdout.splitlines() and len(mine) >= 4
    explained = made.explain(folder)
    assert [(e.source, e.rank, e.target.box) for e in explained] == \
        [(p.source, d.rank, d.box) for p in predicted for d in p.predictions]
    assert {e.target.kind for e in explained} == {"box"}
    # a class, or each image's most confident box: the same maps, fewer of them
    first = [e for e in explained if e.rank == 1]
    for kept, chosen in ((made.explain(folder, top_k=1), first),
                         (made.explain(folder, classes=[first[0].class_index]),
                          [e for e in explained if e.class_index == first[0].class_index])):
        assert [(e.source, e.box) for e in kept] == [(e.source, e.box) for e in chosen]
        for a, b in zip(kept, chosen):
            np.testing.assert_allclose(a.map, b.map, rtol=1e-5, atol=1e-6)


def test_public_activations_equal_the_layers_own_output(tiny_model, keras):
    made = Explainer(tiny_model, precision="fp32")
    conv = next(layer.name for layer in made.layers() if "Conv" in layer.kind)
    images = np.stack([make_scene(np.random.default_rng(i)).image for i in range(2)])
    (first, second) = made.activations(images, layers=[conv])
    model = keras.models.load_model(tiny_model, compile=False)
    inner = keras.Model(model.inputs, model.get_layer(conv).output)
    expected = np.asarray(inner(images.astype("float32")))
    np.testing.assert_allclose(np.stack([first.layers[conv], second.layers[conv]]), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(BadArgument, match="^unknown layer 'no-such-layer': last explainable layers: conv1") as refused:
        made.activations(images, layers=["no-such-layer"])
    assert refused.value.option == "--layer"


def test_public_classviz_is_the_picture_explain_classviz_writes(tiny_model, tmp_path):
    printed = run("classviz", "1", "--model", tiny_model, "--steps", "5", "-o", tmp_path)
    assert printed.exit_code == 0, printed.output
    seen = Explainer(tiny_model).classviz(1, explain_cli.ClassVizSettings(steps=5))
    written = np.asarray(Image.open(printed.stdout.strip()))
    np.testing.assert_array_equal(seen.picture, written)
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert records[-1]["logit"] == pytest.approx(seen.logits[-1], rel=1e-6)


@pytest.mark.parametrize("fixture, kind", [("detector_model", "box"), ("segmenter_model", "region")])
def test_the_callback_explains_every_task(request, keras, fixture, kind, tmp_path):
    from explain_cli.callbacks import ExplainCallback

    model = keras.models.load_model(request.getfixturevalue(fixture), compile=False)
    rng = np.random.default_rng(5)
    images = np.stack([make_detector_scene(rng).image for _ in range(2)])
    callback = ExplainCallback(images, out_dir=tmp_path, precision="fp32")
    callback.set_model(model)
    explained = callback.write(0)
    assert explained and {e.target.kind for e in explained} == {kind}
    written = sorted(p.name for p in (tmp_path / "epoch001").iterdir())
    assert len(written) == len(explained)  # one file each: a detection's carries its rank
    if kind == "box":
        assert all(re.fullmatch(r"\d\.det\d+\.gradcam\.\d-\w+\.png", name) for name in written), written


def test_grouped_arguments_are_the_plain_ones(tiny_model, detector_model):
    from explain_cli import Method, Reading, Running

    image = make_scene(np.random.default_rng(9)).image
    plain = Explainer(tiny_model, method="smoothgrad", samples=4, precision="fp32", batch_size=2)
    grouped = Explainer(tiny_model, method=Method("smoothgrad", samples=4), running=Running(precision="fp32",
                                                                                          batch_size=2))
    assert grouped.settings == plain.settings
    np.testing.assert_array_equal(grouped.explain([image])[0].map, plain.explain([image])[0].map)
    detector = Detector(detector_model, method=Method("drise", masks=50), reading=Reading(min_score=0.5))
    assert (detector.method, detector.drise_masks, detector.min_score) == ("drise", (50, 16, 0.5), 0.5)
    with pytest.raises(BadArgument, match=r"^samples is given twice: as samples=8 and in Method\(samples=4\)$"):
        Explainer(tiny_model, method=Method("smoothgrad", samples=4), samples=8)
    with pytest.raises(BadArgument, match=r"^Reading\(min_score=\.\.\.\) is not an option for Explainer$"):
        Explainer(tiny_model, reading=Reading(min_score=0.5))


def test_a_letterbox_fits_a_picture_whole_and_brings_boxes_and_maps_back():
    from explain_cli.inputs.sources import Canvas, model_input

    canvas = Canvas("letterbox", 64, 64)
    assert canvas.fit(100, 200) == (0.32, 16, 0, 32, 64)  # scaled by 64 / 200, centred: 16 rows of grey above
    box = np.array([[50.0, 25.0, 150.0, 75.0]])  # x0, y0, x1, y1 in the picture's pixels
    np.testing.assert_allclose(canvas.to_input(box, (100, 200)), [[16.0, 24.0, 48.0, 40.0]])
    np.testing.assert_allclose(canvas.to_image(canvas.to_input(box, (100, 200)), (100, 200)), box)
    picture = np.zeros((100, 200, 3), np.uint8)
    picture[..., 0] = 200
    fitted = model_input(picture, 64, 64, 3, resize="letterbox")
    assert (fitted[:16] == 114).all() and (fitted[48:] == 114).all() and (fitted[16:48, :, 0] == 200).all()
    assert canvas.content(np.arange(16 * 16, dtype=np.float32).reshape(16, 16), (100, 200)).shape == (32, 64)
    stretched = Canvas("stretch", 64, 64)
    np.testing.assert_allclose(stretched.to_image(np.array([[16.0, 16.0, 32.0, 32.0]]), (100, 200)),
                               [[50.0, 25.0, 100.0, 50.0]])


def test_a_letterboxed_detector_finds_the_boxes_of_the_grey_padded_input_in_the_pictures_pixels(detector_model):
    from tests.synthetic_detector import make_scene as make_blobs

    rng = np.random.default_rng(21)
    scene = next(s for s in (make_blobs(rng) for _ in range(200))
                 if all(18 <= top and bottom <= 46 for _, (top, _, bottom, _) in s.boxes))
    strip = scene.image[16:48]  # a 32 × 64 photo: letterboxed into 64 × 64 as it is, 16 grey rows above and below
    padded = np.full((64, 64, 3), 114, np.uint8)
    padded[16:48] = strip
    options = dict(method="drise", masks=80, cells=8, precision="fp32")
    boxed = Detector(detector_model, resize="letterbox", **options)
    ours, theirs = boxed.explain([strip]), Detector(detector_model, **options).explain([padded])
    assert len(ours) == len(theirs) >= 2
    for a, b in zip(ours, theirs):
        expected = np.clip(np.array(b.box) - [0, 16, 0, 16], 0, [64, 32, 64, 32])
        np.testing.assert_allclose(a.box, expected, atol=1e-3)  # the padded input's box, in the photo's pixels
        assert a.map.shape == (32, 64)  # the map of the photo's own part of the input
        np.testing.assert_allclose(a.map, b.map[16:48], rtol=1e-4, atol=1e-6)
    stretched = Detector(detector_model, **options).predict([strip])[0]
    assert stretched.boxes.tolist() != [list(e.box) for e in ours]  # a stretched photo is another input
    # evaluate: the same curves as the padded input's (the same model input), each box where explain puts it
    mine = boxed.evaluate([strip], methods=("drise",), steps=4).records
    padded_records = Detector(detector_model, **options).evaluate([padded], methods=("drise",), steps=4).records
    assert [r["box"] for r in mine] == [[round(v, 2) for v in e.box] for e in ours]
    for a, b in zip(mine, padded_records):
        assert a["deletion_auc"] == pytest.approx(b["deletion_auc"], abs=1e-6)
        assert a["insertion_auc"] == pytest.approx(b["insertion_auc"], abs=1e-6)


def test_evaluate_localises_a_letterboxed_map_in_the_pictures_pixels(tiny_model):
    """A classifier's letterboxed photo: the energy in a box is the map's share inside it, the map being the photo's
    part of the input's, upsampled to the photo (what Explanation.heatmap draws), as numpy sums it."""
    rng = np.random.default_rng(2)
    photo = np.concatenate([make_scene(rng).image for _ in range(2)], axis=1)  # 64 × 128: letterboxed to 32 rows
    box = (10.0, 8.0, 60.0, 40.0)
    made = Explainer(tiny_model, resize="letterbox", precision="fp32")
    (record,) = made.evaluate([photo], methods=("gradcam",), boxes={0: [box]}, steps=4).records
    (explained,) = made.explain([photo], classes=[record["class_index"]])
    assert explained.map.shape == (32, 64)  # the photo's part of a 64 × 64 input: 16 rows of grey above and below
    heat = explained.heatmap()
    assert heat.shape == photo.shape[:2]
    inside = heat[8:40, 10:60].sum() / heat.sum()
    assert record["energy_in_box"] == pytest.approx(inside, abs=0.02)
