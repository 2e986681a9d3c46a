"""Clips: video models on (frames, height, width, channels), a TimeDistributed CNN into a Conv3D. Maps equal a full
tape's over the video's own decoded frames; the overlay video keeps the input's frame count and rate; a square that
appears in frames 5 to 8 is where Grad-CAM's and occlusion's frame curves peak; long videos are cut into clips, and a
folder of frames is one clip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import Explainer
from explain_cli.cli.main import cli

av = pytest.importorskip("av")
FRAMES, SIDE, RATE = 12, 24, 10
EVENT = range(5, 9)  # the frames the square shows in


def event_frames() -> np.ndarray:
    """12 dark frames of 30 × 36, a bright square in frames 5 to 8."""
    frames = np.full((FRAMES, 30, 36, 3), 20, np.uint8)
    frames[EVENT.start:EVENT.stop, 8:20, 10:24] = 235
    return frames


def write_video(path, frames: np.ndarray, rate: int = RATE) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def video_model(keras, frames: int = FRAMES):
    """A TimeDistributed Conv2D per frame, then a Conv3D across frames; Rescaling inside; its own softmax layer."""
    keras.utils.set_random_seed(31)
    inputs = keras.Input((frames, SIDE, SIDE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.TimeDistributed(keras.layers.Conv2D(4, 3, padding="same", activation="relu"), name="td")(x)
    x = keras.layers.Conv3D(6, 3, strides=(1, 2, 2), padding="same", activation="relu", name="features")(x)
    logits = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling3D()(x))
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def brightness_model(keras):
    """By hand: a 1×1×1 Conv3D that fires where a pixel is bright (mean channel above 0.5), pooled; class 1, "event",
    rises with it."""
    inputs = keras.Input((FRAMES, SIDE, SIDE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    bright = keras.layers.Conv3D(1, 1, activation="relu", name="bright")
    x = bright(x)
    bright.set_weights([np.full((1, 1, 1, 3, 1), 1 / 3, np.float32), np.array([-0.5], np.float32)])
    dense = keras.layers.Dense(2, name="logits")
    logits = dense(keras.layers.GlobalAveragePooling3D()(x))
    dense.set_weights([np.array([[-20.0, 20.0]], np.float32), np.zeros(2, np.float32)])
    return keras.Model(inputs, keras.layers.Softmax()(logits))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_video(folder / "event.mp4", event_frames())
    return folder / "event.mp4"


def test_gradcam_of_a_video_equals_a_full_tape_over_its_decoded_frames(keras, clip):
    import tensorflow as tf

    model = video_model(keras)
    (e,) = Explainer(model, precision="fp32").explain(str(clip))
    frames = np.stack([np.asarray(Image.fromarray(f).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
                       for f in decoded(clip)]).astype(np.float32)
    probe = keras.Model(model.inputs, [model.get_layer("features").output, model.get_layer("logits").output])
    with tf.GradientTape() as tape:
        features, logits = probe([frames[None]])
        score = logits[0, e.class_index]
    g, a = tape.gradient(score, features)[0].numpy(), features[0].numpy()
    expected = np.maximum((a * g.mean(axis=(0, 1, 2))).sum(-1), 0)
    assert e.map.shape == (FRAMES, SIDE // 2, SIDE // 2) and e.grid.kind == "clip" and e.grid.rate == RATE
    assert float(np.corrcoef(e.map.ravel(), expected.ravel())[0, 1]) >= 0.999
    assert e.image.shape == (FRAMES, 30, 36, 3) and e.heatmap().shape == (FRAMES, 30, 36)


@pytest.mark.parametrize("method, inside", [("gradcam", 0.99), ("occlusion", 0.85)])  # occlusion's window: 2 frames
def test_a_square_that_appears_in_frames_5_to_8_is_where_the_map_peaks(keras, clip, tmp_path, method, inside):
    brightness_model(keras).save(tmp_path / "bright.keras")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["cam", str(clip), "--model", str(tmp_path / "bright.keras"), "--method", method,
                                      "--class", "1", "-o", str(out), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    curve = np.asarray(record["frames"])
    assert len(curve) == FRAMES and curve.sum() == pytest.approx(1.0, abs=1e-4)
    assert int(np.argmax(curve)) in EVENT and curve[list(EVENT)].sum() > inside
    assert curve[:EVENT.start - 1].sum() == curve[EVENT.stop + 1:].sum() == 0.0  # nothing two frames or more away
    with av.open(str(out / record["video"])) as container:  # the overlay video: the input's frames and rate
        stream = container.streams.video[0]
        assert sum(1 for _ in container.decode(stream)) == FRAMES and float(stream.average_rate) == RATE
    assert (out / record["overlay"]).is_file() and record["rate"] == RATE


def test_the_command_line_writes_the_maps_python_gives(keras, clip, tmp_path):
    video_model(keras).save(tmp_path / "video.keras")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["gradcam", str(clip), "--model", str(tmp_path / "video.keras"), "-o", str(out),
                                      "--precision", "fp32", "--save-heatmap", "--slices", "3"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    (e,) = Explainer(str(tmp_path / "video.keras"), precision="fp32").explain(str(clip))
    assert np.allclose(np.load(out / record["heatmap"]), e.heatmap(), atol=1e-6)  # (frames, height, width) of the video
    assert record["class_index"] == e.class_index and f"{clip}\t1\t{e.class_index}\t" in result.stdout


def test_a_long_video_is_cut_into_the_models_clips(keras, clip, tmp_path):
    video_model(keras, frames=5).save(tmp_path / "five.keras")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["gradcam", str(clip), "--model", str(tmp_path / "five.keras"), "-o", str(out),
                                      "--clip-stride", "4", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    # 12 frames in clips of 5 every 4: 0-4, 4-8, and the last reaching the end, 7-11
    assert [(r["first_frame"], len(r["frames"])) for r in records] == [(0, 5), (4, 5), (7, 5)]
    assert [r["overlay"] for r in records] == [f"event.f{a}-{b}.gradcam.{r['class_index']}-{r['label']}.jpg"
                                              for (a, b), r in zip([(0, 4), (4, 8), (7, 11)], records)]


def test_a_folder_of_frames_is_one_clip_and_a_short_one_is_refused(keras, tmp_path):
    video_model(keras).save(tmp_path / "video.keras")
    frames = tmp_path / "walk"
    frames.mkdir()
    for i, frame in enumerate(event_frames()):
        Image.fromarray(frame).save(frames / f"{i:03d}.png")
    short = tmp_path / "short"
    short.mkdir()
    Image.fromarray(event_frames()[0]).save(short / "000.png")
    result = CliRunner().invoke(cli, ["gradcam", str(frames), str(short), "--model", str(tmp_path / "video.keras"),
                                      "-o", str(tmp_path / "out"), "--precision", "fp32"])
    assert result.exit_code == 1
    assert f"error: {short}: a clip of 1 frames; the model takes {FRAMES}: give --clip-length {FRAMES} or a longer " \
           "video" in result.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert record["image"] == str(frames) and len(record["frames"]) == FRAMES
    made = Explainer(str(tmp_path / "video.keras"), precision="fp32")
    (from_folder,), (from_array,) = made.explain(str(frames)), made.explain(event_frames())
    assert np.allclose(from_folder.map, from_array.map, atol=1e-5)  # lossless frames: the same clip


def test_a_recurrent_model_of_any_length_takes_clips_of_clip_length(keras, clip):
    """TimeDistributed Conv2D and pooling per frame, then an LSTM: frames of any count; --clip-length says how many."""
    import tensorflow as tf

    keras.utils.set_random_seed(32)
    inputs = keras.Input((None, SIDE, SIDE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.TimeDistributed(keras.layers.Conv2D(4, 3, padding="same", activation="relu"), name="td")(x)
    x = keras.layers.TimeDistributed(keras.layers.GlobalAveragePooling2D())(x)
    logits = keras.layers.Dense(2, name="logits")(keras.layers.LSTM(6)(x))
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    with pytest.raises(Exception, match="--clip-length FRAMES"):
        Explainer(model)
    found = Explainer(model, clip_length=6, precision="fp32").explain(str(clip))
    assert [(e.grid.start, e.map.shape, e.layer) for e in found] == [(0, (6, SIDE, SIDE), "td"), (6, (6, SIDE, SIDE), "td")]
    frames = np.stack([np.asarray(Image.fromarray(f).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
                       for f in decoded(clip)[6:]]).astype(np.float32)
    probe = keras.Model(model.inputs, [model.get_layer("td").output, model.get_layer("logits").output])
    with tf.GradientTape() as tape:
        features, logits = probe([frames[None]])
        score = logits[0, found[1].class_index]
    g, a = tape.gradient(score, features)[0].numpy(), features[0].numpy()
    expected = np.maximum((a * g.mean(axis=(0, 1, 2))).sum(-1), 0)
    assert float(np.corrcoef(found[1].map.ravel(), expected.ravel())[0, 1]) >= 0.999


def test_without_pyav_a_video_gets_one_line_naming_the_extra(keras, clip, monkeypatch):
    import sys

    made = Explainer(video_model(keras), precision="fp32")
    monkeypatch.setitem(sys.modules, "av", None)  # as if the video extra were not installed
    with pytest.raises(Exception, match=r"reading a video needs PyAV: pip install 'explain-cli\[video\]'"):
        made.explain(str(clip))


def test_the_report_shows_a_clips_strip_and_plays_its_overlay_video(keras, clip, tmp_path):
    """The card's picture is the strip (a video is no picture to thumbnail); its large view plays the overlay video."""
    from tests.test_report import CHROMIUM

    if CHROMIUM is None:
        pytest.skip("no chromium on this machine: apt-get install chromium")
    playwright = pytest.importorskip("playwright.sync_api")
    video_model(keras).save(tmp_path / "video.keras")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["gradcam", str(clip), "--model", str(tmp_path / "video.keras"), "-o", str(out),
                                      "--precision", "fp32", "--report"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((out / "report.html").as_uri())
        page.wait_for_selector("body[data-ready=true]")
        assert page.get_attribute("article.card img.original", "src").startswith("report_files/")
        assert not page.is_visible("#viewer-video")
        page.click("article.card .explanations button")
        assert page.is_visible("#viewer-video") and page.get_attribute("#viewer-video", "src") == record["video"]
        assert page.get_attribute("#viewer-image", "src") == record["overlay"]
        page.click("#toggle")  # the original: no video
        assert not page.is_visible("#viewer-video")
        browser.close()
    assert errors == []


def test_a_clip_over_max_pixels_is_refused_in_one_line(keras, clip, tmp_path):
    video_model(keras).save(tmp_path / "video.keras")
    result = CliRunner().invoke(cli, ["gradcam", str(clip), "--model", str(tmp_path / "video.keras"), "-o",
                                      str(tmp_path / "out"), "--max-pixels", "10000"])
    assert result.exit_code == 1
    assert f"error: {clip}: a clip of {FRAMES} frames of 36x30 is 12,960 pixels, over --max-pixels 10,000" in \
        result.stderr
