"""ExplainCallback: overlays of a few images as a model trains, in TensorBoard and in files, traced once, and the
training left as it would have been."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import SHAPE_CLASSES, make_scene


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(12)
    scenes = [make_scene(rng) for _ in range(192)]
    return np.stack([s.image for s in scenes]).astype("float32"), np.array([s.label for s in scenes])


def model_to_train(keras):
    keras.utils.set_random_seed(12)
    model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Rescaling(1 / 255.0),
                              keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="logits")])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def summaries(log_dir) -> list[tuple[int, str, np.ndarray]]:
    """(step, tag, picture) of every image summary in the event files, read back with TensorFlow."""
    import tensorflow as tf

    found = []
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    width, height, png = tf.make_ndarray(value.tensor)
                    picture = np.asarray(Image.open(io.BytesIO(png)))
                    assert picture.shape[:2] == (int(height), int(width))
                    found.append((event.step, value.tag, picture))
    return found


def test_overlays_every_n_epochs_in_tensorboard_and_files_without_retracing(keras, data, tmp_path):
    from explain_cli import ExplainCallback

    x, y = data
    model = model_to_train(keras)
    images = x[:3].astype(np.uint8)
    callback = ExplainCallback(images, tmp_path / "logs", every=2, out_dir=tmp_path / "files", labels=SHAPE_CLASSES,
                               precision="fp32")
    model.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[callback])

    written = summaries(tmp_path / "logs")
    # epochs 2 and 4 (every 2), and 5 (the last): three images each, their top class
    assert sorted({step for step, _, _ in written}) == [2, 4, 5]
    assert sorted(tag for step, tag, _ in written if step == 2) == ["explain/0/1", "explain/1/1", "explain/2/1"]
    assert all(picture.shape == (64, 64, 3) for _, _, picture in written)
    files = sorted(p.relative_to(tmp_path / "files").as_posix() for p in (tmp_path / "files").rglob("*.png"))
    assert len(files) == 9 and files[0].startswith("epoch002/0.gradcam.")
    (step,) = [s for key, s in callback.explainer._steps.items() if key[0] == "gradcam"]
    assert step.traced.experimental_get_tracing_count() == 1

    # What the last summary shows is the trained model's explanation, drawn as the library draws it.
    last = callback.explainer.explain(images)
    tag = {t: p for s, t, p in written if s == 5}
    shown = np.asarray(last[0].overlay()).astype(int)
    assert np.abs(tag["explain/0/1"].astype(int) - shown).max() <= 1


def test_the_training_is_not_touched(keras, data, tmp_path):
    """The weights and the optimizer's state are the same after the callback runs as before it, every epoch."""
    from explain_cli import ExplainCallback

    x, y = data
    model = model_to_train(keras)
    seen = []

    class Before(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.weights = [w.copy() for w in self.model.get_weights()]
            self.optimizer = [v.numpy().copy() for v in self.model.optimizer.variables]

    class After(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(all(np.array_equal(a, b) for a, b in zip(before.weights, self.model.get_weights())) and all(
                np.array_equal(a, v.numpy()) for a, v in zip(before.optimizer, self.model.optimizer.variables)))

    before = Before()
    model.fit(x, y, epochs=2, batch_size=64, verbose=0,
              callbacks=[before, ExplainCallback(x[:2].astype(np.uint8), tmp_path / "logs"), After()])
    assert seen == [True, True]


def test_it_needs_somewhere_to_write():
    from explain_cli import ExplainCallback

    with pytest.raises(ValueError, match="give one"):
        ExplainCallback(np.zeros((1, 8, 8, 3), np.uint8))
