"""Synthetic data a model can learn in seconds, and the models the tests train on it (tests/trained.py makes them).

- scenes: a coloured square on grey clutter, the colour its class (the tiny model);
- shapes: an outline in any colour on noise, the outline its class (the shapes model, fed four ways);
- marks: a large mark whose colour and outline together are its class, beside a small mark of another class (the
  model explain evaluate is tested on).

Used by the tests (models that know something, so explanations can be checked against where the object is) and by
scripts/compare_methods.py (a picture whose right answer is visible).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPE_CLASSES = ("red", "green", "blue")  # the colour of the square is the class
TINY_SIZE = 64


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (h, w, 3) uint8
    label: int
    box: tuple[int, int, int, int]  # top, left, bottom, right (exclusive), in image pixels


def make_scene(rng: np.random.Generator, height: int = TINY_SIZE, width: int = TINY_SIZE) -> Scene:
    """A coloured square at a random place on grey clutter; the colour is the class."""
    image = rng.integers(60, 160, size=(height, width, 1), dtype=np.uint8).repeat(3, axis=2)
    for _ in range(6):  # grey bars: clutter without colour
        top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
        image[top : top + rng.integers(2, 6), left : left + rng.integers(4, 20)] = rng.integers(0, 255)
    label = int(rng.integers(0, len(SHAPE_CLASSES)))
    side = int(rng.integers(height // 6, height // 4))
    top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
    color = np.zeros(3, np.uint8)
    color[label] = 230
    image[top : top + side, left : left + side] = color
    return Scene(image, label, (top, left, top + side, left + side))


def held_out_accuracy(model, make, seed: int, count: int = 300) -> float:
    """The model's accuracy on `count` scenes it never saw (another seed)."""
    rng = np.random.default_rng(seed)
    scenes = [make(rng) for _ in range(count)]
    predicted = np.argmax(model.predict(np.stack([s.image for s in scenes]).astype("float32"), verbose=0), axis=1)
    return float(np.mean(predicted == [s.label for s in scenes]))


def check_quality(name: str, accuracy: float, least: float) -> str:
    if accuracy < least:
        raise AssertionError(f"{name} trained badly: held-out accuracy {accuracy:.3f} < {least}")
    return f"held-out accuracy {accuracy:.3f}"


def train_tiny_model(keras, path: Path) -> str:
    """A small CNN trained on coloured squares, saved as .keras with its own rescaling inside; its held-out accuracy."""
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    scenes = [make_scene(rng) for _ in range(1200)]
    x = np.stack([s.image for s in scenes]).astype("float32")
    y = np.array([s.label for s in scenes])
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((TINY_SIZE, TINY_SIZE, 3)),
            layers.Rescaling(1 / 255.0, name="rescale"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(len(SHAPE_CLASSES), activation="softmax", name="scores"),
        ],
        name="tiny",
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    model.save(path)
    return check_quality("tiny", held_out_accuracy(model, make_scene, 2027), 0.97)




SHAPES = ("disc", "square", "cross", "ring")  # the outline is the class, whatever its colour
SHAPES_SIZE = 64


def shape_mask(name: str, dy: np.ndarray, dx: np.ndarray, radius: int) -> np.ndarray:
    """Where a shape of SHAPES lies, given each pixel's offset (dy, dx) from its centre."""
    distance = np.hypot(dy, dx)
    bar = max(2, radius // 3)
    if name == "disc":
        return distance <= radius
    if name == "square":
        return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    if name == "cross":
        return ((np.abs(dy) <= bar) | (np.abs(dx) <= bar)) & (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    return (distance <= radius) & (distance >= radius - bar)  # ring


def make_shape(rng: np.random.Generator, size: int = SHAPES_SIZE) -> Scene:
    """One of SHAPES, in a random colour, size and place, on a noisy background of another brightness."""
    background = rng.integers(40, 200)
    image = np.clip(rng.normal(background, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    label = int(rng.integers(0, len(SHAPES)))
    radius = int(rng.integers(size // 7, size // 4))
    cy, cx = (int(rng.integers(radius + 2, size - radius - 2)) for _ in range(2))
    y, x = np.mgrid[:size, :size]
    mask = shape_mask(SHAPES[label], y - cy, x - cx, radius)
    colour = rng.integers(0, 256, 3)
    while abs(int(colour.mean()) - int(background)) < 60:  # the shape stands out from its background
        colour = rng.integers(0, 256, 3)
    image[mask] = colour
    rows, cols = np.nonzero(mask)
    return Scene(image, label, (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1))


def _shapes_layers(keras, first_bias: bool, classes: int = len(SHAPES), pools: int = 2) -> list:
    """conv / BatchNorm / ReLU blocks (max pooling after the first `pools`), global average pooling and a Dense of
    logits."""
    layers = keras.layers
    stack: list = []
    for block, width in enumerate((16, 32, 64), start=1):
        stack += [
            layers.Conv2D(width, 3, padding="same", use_bias=first_bias and block == 1, name=f"conv{block}"),
            layers.BatchNormalization(momentum=0.9, name=f"bn{block}"),  # short training: track fast
            layers.ReLU(name=f"relu{block}"),
        ]
        if block <= pools:
            stack.append(layers.MaxPooling2D(name=f"pool{block}"))
    return stack + [layers.GlobalAveragePooling2D(name="gap"), layers.Dense(classes, name="logits")]


def train_shapes_model(keras, path: Path, count: int = 2000, epochs: int = 8, seed: int = 11) -> str:
    """A conv / BatchNorm / ReLU classifier of SHAPES, as users build them, with Rescaling(1/255) as its first layer
    (explained with --preprocess none); its held-out accuracy."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = [make_shape(rng) for _ in range(count)]
    x = np.stack([s.image for s in scenes]).astype("float32")
    y = np.array([s.label for s in scenes])
    stack = [keras.Input((SHAPES_SIZE, SHAPES_SIZE, 3)), keras.layers.Rescaling(1 / 255.0, name="rescale")]
    model = keras.Sequential(stack + _shapes_layers(keras, first_bias=False), name="shapes_none")
    steps = epochs * -(-count // 32)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return check_quality("shapes", held_out_accuracy(model, make_shape, 2028), 0.95)


# keras.applications.imagenet_utils' modes, as x_mode = (x_rgb[channel order] / divisor - mean) / std per channel.
PREPROCESS = {
    "caffe": dict(order=(2, 1, 0), divisor=1.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)),
    "tf": dict(order=(0, 1, 2), divisor=127.5, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0)),
    "torch": dict(order=(0, 1, 2), divisor=255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}


def preprocessed_twin(keras, source: Path, mode: str, path: Path) -> None:
    """The shapes model for inputs preprocessed by `mode` (caffe, tf, torch) instead of rescaled inside: its first
    convolution takes the inverse of the preprocessing (an affine map per channel) into its kernel and bias, so the
    twin computes what the model computes on the same pixels, but where the 3×3 window meets the zero padding.
    One training serves four models that users feed their four ways."""
    model = keras.models.load_model(source, compile=False)
    spec = PREPROCESS[mode]
    order, divisor = np.array(spec["order"]), spec["divisor"]
    mean, std = np.array(spec["mean"]), np.array(spec["std"])
    # x_mode[c] = (x[order[c]] / divisor - mean[c]) / std[c], so x[order[c]] / 255 = (x_mode[c] std[c] + mean[c]) divisor / 255.
    (kernel,) = model.get_layer("conv1").get_weights()
    in_rgb = kernel / 255.0 * divisor  # conv1's weights per unit of x / divisor
    twin_kernel = np.empty_like(kernel)
    bias = np.zeros(kernel.shape[-1])
    for c, source_channel in enumerate(order):
        twin_kernel[:, :, c, :] = in_rgb[:, :, source_channel, :] * std[c]
        bias += (in_rgb[:, :, source_channel, :] * mean[c]).sum(axis=(0, 1))
    twin = keras.Sequential([keras.Input((SHAPES_SIZE, SHAPES_SIZE, 3))] + _shapes_layers(keras, first_bias=True),
                            name=f"shapes_{mode}")
    twin.get_layer("conv1").set_weights([twin_kernel, bias.astype(np.float32)])
    for layer in model.layers[2:]:  # after Rescaling and conv1
        twin.get_layer(layer.name).set_weights(layer.get_weights())
    twin.save(path)


MARKS = ("red_disc", "red_square", "blue_disc", "blue_square")  # colour and outline together make the class
MARK_COLOURS = {"red": (220, 40, 40), "blue": (40, 40, 220)}


def _mark_mask(size: int, kind: str, cy: int, cx: int, radius: int) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    if kind == "disc":
        return np.hypot(y - cy, x - cx) <= radius
    return (np.abs(y - cy) <= radius * 0.85) & (np.abs(x - cx) <= radius * 0.85)


def make_mark(rng: np.random.Generator, size: int = SHAPES_SIZE) -> Scene:
    """One of MARKS, large, on noisy grey, and a small mark of another class beside it: the large one is the class."""
    image = np.clip(rng.normal(rng.integers(60, 160), 18, (size, size, 3)), 0, 255).astype(np.uint8)
    label = int(rng.integers(0, len(MARKS)))
    radius = int(rng.integers(size // 7, size // 4))
    cy, cx = (int(rng.integers(radius + 2, size - radius - 2)) for _ in range(2))
    mask = _mark_mask(size, MARKS[label].split("_")[1], cy, cx, radius)
    other = int(rng.choice([c for c in range(len(MARKS)) if c != label]))
    small = int(rng.integers(3, 6))
    while True:  # beside the large mark, never on it
        sy, sx = (int(rng.integers(small + 2, size - small - 2)) for _ in range(2))
        if max(abs(sy - cy), abs(sx - cx)) > radius + small + 3:
            break
    for (kind_of, where) in ((MARKS[other], _mark_mask(size, MARKS[other].split("_")[1], sy, sx, small)),
                             (MARKS[label], mask)):
        image[where] = np.clip(np.array(MARK_COLOURS[kind_of.split("_")[0]]) + rng.integers(-25, 26, 3), 0, 255)
    rows, cols = np.nonzero(mask)
    return Scene(image, label, (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1))


def _perturbed(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Half the training images as evaluate perturbs them: a quarter dimmed by a smooth random map (image × map,
    Average Drop's input), a quarter with black blocks (deletion's). The model learns that neither is evidence, the
    assumption these metrics make of the models they measure."""
    from PIL import Image

    size = image.shape[0]
    pixels = image.astype(np.float32)
    draw = rng.random()
    if draw < 0.25:
        coarse = Image.fromarray(rng.random((8, 8)).astype(np.float32), mode="F")
        return pixels * np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR))[..., None]
    if draw < 0.5:
        blocks = np.kron(rng.random((16, 16)) < rng.uniform(0.1, 0.6), np.ones((size // 16, size // 16)))
        return np.where(blocks[..., None] > 0, 0.0, pixels)
    return pixels


def train_marks_model(keras, path: Path, count: int = 3000, epochs: int = 8, seed: int = 11) -> str:
    """The shapes architecture trained on MARKS, half of them perturbed as evaluate perturbs images; its held-out
    accuracy. What explain evaluate is tested on: every metric has something to measure on it."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = [make_mark(rng) for _ in range(count)]
    x = np.stack([_perturbed(rng, s.image) for s in scenes])
    y = np.array([s.label for s in scenes])
    stack = [keras.Input((SHAPES_SIZE, SHAPES_SIZE, 3)), keras.layers.Rescaling(1 / 255.0, name="rescale")]
    model = keras.Sequential(stack + _shapes_layers(keras, first_bias=False, classes=len(MARKS)), name="marks")
    steps = epochs * -(-count // 32)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return check_quality("marks", held_out_accuracy(model, make_mark, 2029), 0.97)


@dataclass(frozen=True)
class Shapes:
    """Several SHAPES in one image: which are present, a box around each, and each pixel's class."""

    image: np.ndarray  # (h, w, 3) uint8
    present: frozenset[int]  # the SHAPES drawn
    boxes: tuple[tuple[int, tuple[int, int, int, int]], ...]  # (shape, (top, left, bottom, right)) per shape drawn
    mask: np.ndarray  # (h, w) uint8: 0 background, 1 + the shape's index where it is drawn


def make_shapes(rng: np.random.Generator, size: int = SHAPES_SIZE, most: int = 3) -> Shapes:
    """One to `most` different SHAPES, apart, each in its own colour, on a noisy background of another brightness."""
    background = rng.integers(40, 200)
    image = np.clip(rng.normal(background, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    drawn: list[tuple[int, tuple[int, int, int, int]]] = []
    y, x = np.mgrid[:size, :size]
    for label in rng.permutation(len(SHAPES))[: int(rng.integers(1, most + 1))]:
        radius = int(rng.integers(size // 8, size // 5))
        for _ in range(50):  # a place apart from the shapes drawn
            cy, cx = (int(rng.integers(radius + 1, size - radius - 1)) for _ in range(2))
            if all(cy + radius + 2 < top or cy - radius - 2 > bottom or cx + radius + 2 < left or cx - radius - 2 > right
                   for _, (top, left, bottom, right) in drawn):
                break
        else:
            continue
        where = shape_mask(SHAPES[int(label)], y - cy, x - cx, radius)
        colour = rng.integers(0, 256, 3)
        while abs(int(colour.mean()) - int(background)) < 60:
            colour = rng.integers(0, 256, 3)
        image[where] = colour
        mask[where] = int(label) + 1
        rows, cols = np.nonzero(where)
        drawn.append((int(label), (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)))
    return Shapes(image, frozenset(label for label, _ in drawn), tuple(drawn), mask)


def train_multilabel_model(keras, path: Path, count: int = 3000, epochs: int = 10, seed: int = 13) -> str:
    """The shapes architecture ending in one sigmoid per shape, trained on several shapes per image; its held-out
    macro F1 at 0.5."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = [make_shapes(rng) for _ in range(count)]
    x = np.stack([s.image for s in scenes]).astype("float32")
    y = np.array([[label in s.present for label in range(len(SHAPES))] for s in scenes], np.float32)
    layers = _shapes_layers(keras, first_bias=False, pools=1)  # its last feature map at 32 × 32: maps that land
    layers[-1] = keras.layers.Dense(len(SHAPES), activation="sigmoid", name="labels")
    model = keras.Sequential([keras.Input((SHAPES_SIZE, SHAPES_SIZE, 3)), keras.layers.Rescaling(1 / 255.0)] + layers,
                             name="several_shapes")
    steps = epochs * -(-count // 32)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                  loss="binary_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    rng = np.random.default_rng(2030)
    held = [make_shapes(rng) for _ in range(300)]
    predicted = model.predict(np.stack([s.image for s in held]).astype("float32"), verbose=0) >= 0.5
    truth = np.array([[label in s.present for label in range(len(SHAPES))] for s in held])
    true_positive = (predicted & truth).sum(0)
    f1 = 2 * true_positive / np.maximum(predicted.sum(0) + truth.sum(0), 1)
    return check_quality("multilabel", float(f1.mean()), 0.9).replace("accuracy", "macro F1")


COLOURS = ("red", "green", "blue")  # a segmentation's classes, after the background


def make_colour_blobs(rng: np.random.Generator, size: int = SHAPES_SIZE, most: int = 3) -> Shapes:
    """One to `most` discs or squares, apart, each pure red, green or blue, on grey clutter: `present` are the
    colours drawn (indexes of COLOURS), and each pixel's class 1 + its colour's index (0: the background)."""
    image = rng.integers(60, 160, size=(size, size, 1), dtype=np.uint8).repeat(3, axis=2)
    for _ in range(6):  # grey bars: clutter without colour
        top, left = rng.integers(0, size - 4), rng.integers(0, size - 4)
        image[top : top + rng.integers(2, 6), left : left + rng.integers(4, 20)] = rng.integers(0, 255)
    mask = np.zeros((size, size), np.uint8)
    drawn: list[tuple[int, tuple[int, int, int, int]]] = []
    y, x = np.mgrid[:size, :size]
    for _ in range(int(rng.integers(1, most + 1))):
        colour, radius = int(rng.integers(0, len(COLOURS))), int(rng.integers(size // 10, size // 6))
        for _ in range(50):
            cy, cx = (int(rng.integers(radius + 1, size - radius - 1)) for _ in range(2))
            if all(cy + radius + 2 < top or cy - radius - 2 > bottom or cx + radius + 2 < left or cx - radius - 2 > right
                   for _, (top, left, bottom, right) in drawn):
                break
        else:
            continue
        where = np.hypot(y - cy, x - cx) <= radius if rng.random() < 0.5 else (
            (np.abs(y - cy) <= radius) & (np.abs(x - cx) <= radius))
        image[where] = np.eye(3, dtype=np.uint8)[colour] * int(rng.integers(190, 250))
        mask[where] = colour + 1
        rows, cols = np.nonzero(where)
        drawn.append((colour, (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)))
    return Shapes(image, frozenset(c for c, _ in drawn), tuple(drawn), mask)


def train_segmenter(keras, path: Path, count: int = 1500, epochs: int = 6, seed: int = 17) -> str:
    """A small U-Net (two poolings down, two transposed convolutions up, skips joined) scoring each pixel as
    background or one of COLOURS, trained on colour blobs; its held-out mean IoU over the colours."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = [make_colour_blobs(rng) for _ in range(count)]
    x = np.stack([s.image for s in scenes]).astype("float32")
    y = np.stack([s.mask for s in scenes]).astype("int32")
    layers = keras.layers
    inputs = keras.Input((SHAPES_SIZE, SHAPES_SIZE, 3))
    scaled = layers.Rescaling(1 / 255.0)(inputs)

    def block(t, width, name):
        t = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv")(t)
        return layers.ReLU(name=f"{name}_relu")(layers.BatchNormalization(name=f"{name}_bn")(t))

    down1 = block(scaled, 8, "down1")
    down2 = block(layers.MaxPooling2D(name="pool1")(down1), 16, "down2")
    bottom = block(layers.MaxPooling2D(name="pool2")(down2), 32, "bottom")
    up2 = layers.Conv2DTranspose(16, 2, strides=2, name="up2_transpose")(bottom)
    up2 = block(layers.Concatenate(name="up2_join")([up2, down2]), 16, "up2")
    up1 = layers.Conv2DTranspose(8, 2, strides=2, name="up1_transpose")(up2)
    up1 = block(layers.Concatenate(name="up1_join")([up1, down1]), 8, "up1")
    outputs = layers.Conv2D(len(COLOURS) + 1, 1, activation="softmax", name="pixels")(up1)
    model = keras.Model(inputs, outputs, name="segmenter")
    steps = epochs * -(-count // 32)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(5e-3, steps)),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    rng = np.random.default_rng(2031)
    held = [make_colour_blobs(rng) for _ in range(100)]
    predicted = np.argmax(model.predict(np.stack([s.image for s in held]).astype("float32"), verbose=0), -1)
    truth = np.stack([s.mask for s in held])
    ious = [((predicted == c) & (truth == c)).sum() / max(((predicted == c) | (truth == c)).sum(), 1)
            for c in range(1, len(COLOURS) + 1)]
    return check_quality("segmenter", float(np.mean(ious)), 0.85).replace("accuracy", "mean IoU")


def one_channel(keras, segmenter_model, channels_first: bool = False):
    """The trained segmenter as a text detector's kind of output: one sigmoid channel, σ(logit(1 − p_background)),
    in NHWC, or taking and giving NCHW."""
    from keras import layers, ops

    base = keras.models.load_model(segmenter_model, compile=False)
    inputs = keras.Input((3, 64, 64) if channels_first else (64, 64, 3))
    pictures = ops.transpose(inputs, (0, 2, 3, 1)) if channels_first else inputs
    background = ops.clip(base(pictures)[..., :1], 1e-6, 1 - 1e-6)
    foreground = layers.Activation("sigmoid")(ops.log(1.0 - background) - ops.log(background))
    outputs = ops.transpose(foreground, (0, 3, 1, 2)) if channels_first else foreground
    model = keras.Model(inputs, outputs, name="nchw_blobs" if channels_first else "blobs")
    model(np.zeros((1, *inputs.shape[1:]), np.float32))  # Keras exports only a model that has been called
    return model
