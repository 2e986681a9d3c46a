"""Inside a compiled step: which (image, class) rows are explained, and the score each row differentiates.

A step runs the head on k copies of each image's activations, class-major (copy j of image i at row j·b + i).
`read_rows` reads the head's output of the untouched images: what each image shows (its probabilities, a value, a
segmentation's pixel shares), which k classes each explains (given, its own, or its top k by what it shows), and then
the score of every row from any output of the same rows: the class's logit (binary: ±z; a value: itself), or for a
segmentation the class's pixel scores summed over the row's region (Vinogradova et al. 2020's Seg-Grad-CAM target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from explain_cli.model import heads
from explain_cli.model.graph import repeated

Tensor = Any


@dataclass(frozen=True)
class Rows:
    shown: Tensor  # (b, classes): probabilities, a value, or a segmentation's pixel shares
    chosen: Tensor  # (b, k): the classes explained
    row_class: Tensor  # (k·b,): each row's class
    score: Callable[[Tensor], Tensor]  # the head's output of the rows -> (k·b,) their scores
    score_one: Callable[[Tensor, Tensor], Tensor]  # (n outputs of one row's image, the row) -> (n,) its logit scores
    extras: Callable[[int, Tensor], dict[str, Tensor]]  # (k, b) -> per image: a segmentation's regions and map


def read_rows(head: heads.Head, first: Tensor, fixed: Tensor | None, k: int, score: str, own: Tensor | None = None,
              regions: Tensor | None = None, inside: Tensor | None = None, references: Tensor | None = None) -> Rows:
    """The rows of a step from the head's output of the b images themselves (`first`): `fixed` classes for every
    image, each image's `own` class (b,), or its top k; a segmentation's `regions` (b, H, W), else where each
    row's class is predicted, and `inside` (b, H, W): where each picture lies on a letterboxed input, the only
    pixels a segmentation is read on. With `references` (b, k, D), row j of image i is the image's likeness to its
    reference j instead, whatever the head."""
    import tensorflow as tf

    if references is not None:
        return similarity_rows(head, first, references, k)
    if head.kind == "pixels":
        return _pixel_rows(head, first, fixed, k, score, own, regions, inside)
    shown = heads.probabilities(head, first)
    chosen, row_class = choose(shown, fixed, k, own)

    def score_rows(raw: Tensor) -> Tensor:
        return tf.gather(heads.class_scores(head, raw, score), row_class, batch_dims=1)

    def score_one(raw: Tensor, row: Tensor) -> Tensor:  # Score-CAM's score: the logit, whatever `score` says
        return tf.gather(heads.class_scores(head, raw), row_class[row], axis=1)

    return Rows(shown, chosen, row_class, score_rows, score_one, lambda k, b: {})


def _pixel_rows(head: heads.Head, first: Tensor, fixed: Tensor | None, k: int, score: str, own: Tensor | None,
                regions: Tensor | None, inside: Tensor | None) -> Rows:
    import tensorflow as tf

    # Every pass over a (b, h, w, classes) output at the input's resolution costs about as much as a small
    # layer: each is made once, the rest works on (b, h, w) maps.
    first = tf.stop_gradient(first)
    classes = heads.pixel_classes(head, first)  # (b, h, w); a volume's (b, d, h, w)
    size = tf.shape(classes)[1:]
    axes = list(range(1, len(classes.shape)))
    placed = None if inside is None else at_size(inside, size)
    shown = heads.pixel_shares(head, first, classes, placed)
    chosen, row_class = choose(shown, fixed, k, own)
    if regions is None:
        region = heads.class_region(head, tile(first, k) if heads.several_per_pixel(head) else first, tile(classes, k),
                                    row_class)
        region = region if placed is None else region * tile(placed, k)
    else:
        given = at_size(regions, size)
        region = tile(tf.cast(given > 0.5, tf.float32), k)

    def score_rows(raw: Tensor) -> Tensor:
        return tf.reduce_sum(heads.class_pixels(head, raw, row_class, score) * region, axis=axes)

    def score_one(raw: Tensor, row: Tensor) -> Tensor:
        values = tf.gather(heads.pixel_scores(head, raw), row_class[row], axis=len(axes) + 1)  # (n, h, w)
        return tf.reduce_sum(values * region[row][None], axis=axes)

    def extras(k: int, b: Tensor) -> dict[str, Tensor]:
        probabilities = tile(heads.pixel_probabilities(head, first), k)  # k copies, one softmax
        probability = tf.gather(probabilities, row_class, axis=len(axes) + 1, batch_dims=1)
        area = tf.reduce_sum(region, axis=axes)
        pixels = tf.cast(tf.reduce_prod(size), tf.float32) if placed is None else tile(tf.reduce_sum(placed, axis=(1, 2)),
                                                                                      k)
        mean = tf.reduce_sum(probability * region, axis=axes) / tf.maximum(area, 1.0)
        return {"share": per_image(area / pixels, k, b), "mean_probability": per_image(mean, k, b),
                "segmentation": classes}

    return Rows(shown, chosen, row_class, score_rows, score_one, extras)


def similarity_rows(head: heads.Head, first: Tensor, references: Tensor, k: int) -> Rows:
    """Rows that score an embedding's likeness to each image's k references (b, k, D): the cosine
    cos(e, r) = e·r / (‖e‖ ‖r‖) of the model's own output e (flattened) with r, row j·b + i for image i's reference j."""
    import tensorflow as tf

    b = tf.shape(first)[0]
    against = tf.math.l2_normalize(tf.reshape(tf.transpose(references, [1, 0, 2]), [k * b, -1]), axis=1)

    def cosines(raw: Tensor, unit: Tensor) -> Tensor:
        return tf.reduce_sum(tf.math.l2_normalize(heads.embedding(head, raw), axis=1) * unit, axis=1)

    shown = per_image(cosines(tile(tf.stop_gradient(first), k), against), k, b)  # (b, k)
    chosen = tf.broadcast_to(tf.range(k, dtype=tf.int32)[None], [b, k])
    row_class = tf.reshape(tf.transpose(chosen), [-1])

    def score_one(raw: Tensor, row: Tensor) -> Tensor:
        return cosines(raw, against[row][None])

    return Rows(shown, chosen, row_class, lambda raw: cosines(raw, against), score_one, lambda k, b: {})


def at_size(planes: Tensor, size: Tensor) -> Tensor:
    """(b, H, W) planes at the input's resolution -> (b, h, w) at `size`, by nearest neighbour."""
    import tensorflow as tf

    return tf.image.resize(planes[..., None], size, method="nearest")[..., 0]


def choose(shown: Tensor, fixed: Tensor | None, k: int, own: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The classes to explain: (b, k) per image (each image's own, the given ones, or the top k of what it shows)
    and (k·b,) per row."""
    import tensorflow as tf

    b = tf.shape(shown)[0]
    if own is not None:
        chosen = own[:, None]
    elif fixed is None:
        chosen = tf.math.top_k(shown, k=k).indices
    else:
        chosen = tf.broadcast_to(fixed, [b, k])
    return chosen, tf.reshape(tf.transpose(chosen), [-1])


def tile(tensor: Tensor, k: int) -> Tensor:
    """k copies of a batch along its first axis: copy j of row i at j·b + i."""
    return tensor if k == 1 else repeated(tensor, k)


def per_image(rows: Tensor, k: int, b: Tensor) -> Tensor:
    """Rows ordered class-major (copy j of image i at j·b + i) regrouped as (b, k, ...)."""
    import tensorflow as tf

    grouped = tf.reshape(rows, tf.concat([[k, b], tf.shape(rows)[1:]], 0))
    return tf.transpose(grouped, tf.concat([[1, 0], tf.range(2, tf.rank(grouped))], 0))
