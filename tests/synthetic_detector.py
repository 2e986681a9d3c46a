"""A small one-stage object detector the tests train in a minute: colour blobs, two or three to an image, found by a
16 × 16 grid of cells, each scoring the three colours (sigmoids) and placing a box around its centre.

Its outputs are what a user's own detector gives before non-maximum suppression: "boxes" (b, 256, 4) as x0, y0, x1, y1
in the input's pixels (each cell's centre minus and plus distances it predicts), and "scores" (b, 256, 3). The boxes
are decoded inside the model with Keras ops, so the file loads with no code of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.synthetic import COLOURS, SHAPES_SIZE, Shapes, make_colour_blobs

STRIDE = 4  # input pixels per cell
GRID = SHAPES_SIZE // STRIDE
REACH = 4.0 * STRIDE  # the distances' unit: a softplus of 1 is 16 pixels


def make_scene(rng: np.random.Generator) -> Shapes:
    """Two or three colour blobs, apart, each of its own colour (Grad-CAM's maps are a class's, not an object's: two
    blobs of one colour would share them)."""
    while True:
        scene = make_colour_blobs(rng, most=3)
        if len(scene.boxes) >= 2 and len(scene.present) == len(scene.boxes):
            return scene


def build(keras):
    """The detector: four convolutions down to the 16 × 16 grid ("features", the default layer), then a class head
    and a box head on it."""
    from keras import layers, ops

    inputs = keras.Input((SHAPES_SIZE, SHAPES_SIZE, 3))
    t = layers.Rescaling(1 / 255.0)(inputs)
    t = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(t)
    t = layers.MaxPooling2D(name="pool1")(t)
    t = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(t)
    t = layers.MaxPooling2D(name="pool2")(t)
    t = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(t)
    features = layers.Conv2D(32, 3, padding="same", dilation_rate=2, activation="relu", name="features")(t)
    scores = layers.Conv2D(len(COLOURS), 3, padding="same", activation="sigmoid", name="classes")(features)
    distances = layers.Conv2D(4, 3, padding="same", activation="softplus", name="distances")(features) * REACH
    ones = ops.ones_like(features[..., :1])
    rows = (ops.cumsum(ones, axis=1) - 0.5) * STRIDE
    cols = (ops.cumsum(ones, axis=2) - 0.5) * STRIDE
    corners = ops.concatenate([cols - distances[..., 0:1], rows - distances[..., 1:2], cols + distances[..., 2:3],
                               rows + distances[..., 3:4]], axis=-1)
    return keras.Model(inputs, {"boxes": layers.Reshape((-1, 4), name="boxes")(corners),
                                "scores": layers.Reshape((-1, len(COLOURS)), name="scores")(scores)}, name="blob_detector")


def targets(scene: Shapes) -> tuple[np.ndarray, np.ndarray]:
    """A scene's per-cell targets: each colour's presence (A, 3), and the box (A, 5: x0, y0, x1, y1, 1) of the smallest
    blob whose box holds the cell's centre (0 where none does)."""
    classes = np.zeros((GRID * GRID, len(COLOURS)), np.float32)
    found = np.zeros((GRID * GRID, 5), np.float32)
    centre = (np.arange(GRID) + 0.5) * STRIDE
    for colour, (top, left, bottom, right) in sorted(scene.boxes, key=lambda b: -(b[1][2] - b[1][0]) * (b[1][3] - b[1][1])):
        inside = (centre[:, None] >= top) & (centre[:, None] < bottom) & (centre[None] >= left) & (centre[None] < right)
        cells = np.flatnonzero(inside.ravel())  # rows of the grid first, as the model's reshape orders them
        classes[cells] = 0.0
        classes[cells, colour] = 1.0
        found[cells] = (left, top, right, bottom, 1.0)
    return classes, found


def train(keras, path: Path, count: int = 2000, epochs: int = 12, seed: int = 23) -> str:
    """Train the detector on `count` scenes; its held-out mAP at IoU 0.5 (explain's own NMS at 0.3 and 0.5)."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng) for _ in range(count)]
    x = np.stack([s.image for s in scenes]).astype("float32")
    made = [targets(s) for s in scenes]
    y = {"scores": np.stack([c for c, _ in made]), "boxes": np.stack([b for _, b in made])}
    model = build(keras)

    def box_loss(true, predicted):
        from keras import ops

        positive = true[..., 4]
        error = ops.sum(ops.abs(true[..., :4] - predicted), axis=-1) / REACH
        return ops.sum(error * positive, axis=-1) / ops.maximum(ops.sum(positive, axis=-1), 1.0)

    steps = epochs * -(-count // 32)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(4e-3, steps)),
                  loss={"scores": "binary_crossentropy", "boxes": box_loss}, loss_weights={"scores": 4.0, "boxes": 1.0})
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    keras.Model(model.inputs, dict(zip(model.output_names, model.outputs)), name=model.name).save(path)  # without the compile settings: its loss is
    # a function of this file, which a model file cannot name
    return _check(model)


def _check(model) -> str:
    """The held-out mAP@0.5 and recall of the trained detector, through explain's NMS; raises where it is poor."""
    from explain_cli.tasks import boxes

    rng = np.random.default_rng(2032)
    held = [make_scene(rng) for _ in range(100)]
    out = model.predict(np.stack([s.image for s in held]).astype("float32"), verbose=0)
    found, truth = [], {}
    for i, scene in enumerate(held):
        classes = out["scores"][i].argmax(1)
        scores = out["scores"][i].max(1)
        for k in boxes.nms(out["boxes"][i], scores, classes, 0.5, 0.3, 20):
            found.append(boxes.Found(i, int(classes[k]), float(scores[k]), tuple(out["boxes"][i][k])))
        truth[i] = [(c, (left, top, right, bottom)) for c, (top, left, bottom, right) in scene.boxes]
    result = boxes.precision_recall(found, truth)
    if result["map50"] < 0.8:
        raise AssertionError(f"the detector trained badly: held-out mAP@0.5 {result['map50']:.3f} < 0.8")
    return f"held-out mAP@0.5 {result['map50']:.3f}, recall {result['recall']:.3f}"
