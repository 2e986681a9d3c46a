"""What a model outputs, and so what can be explained of it: the head, read from the output explain cuts its way to.

| kind | output (batch first) | classes | a class's score (differentiated) | its probability |
| --- | --- | --- | --- | --- |
| classes | (C), a softmax or logits | C | the logit | softmax |
| labels | (C), sigmoids (or logits with multi_label) | C | the logit | sigmoid, each its own |
| binary | (1), a sigmoid | 2 | 1: the logit z; 0: −z | σ(z) and 1 − σ(z) |
| value | (1) linear, or element K of (D) | 1 | the value itself | none: the value is shown |
| pixels | (h, w, C) per-pixel scores | C (2 for one sigmoid channel) | Σ over a region of the pixel logit | per pixel |

The final softmax or sigmoid is left out of the scores (model/cut.py): they are pre-activation, as in the Grad-CAM paper.
Nothing here needs TensorFlow but the functions that compute on tensors, which import it when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from explain_cli.errors import BadArgument, ExplainError

Tensor = Any
UNDERSTOOD = ("explain understands outputs of shape (batch, classes) (a softmax or logits; sigmoids for several "
              "labels), (batch, 1) (a sigmoid: binary; linear: a value), and (batch, height, width, classes) (per "
              "pixel: a segmentation)")


@dataclass(frozen=True)
class Reading:
    """How to read a model's output: which one (`output`, for a model with several), logits as several labels
    (`multi_label`), or one element of a vector as a value (`output_index`)."""

    output: str | None = None
    multi_label: bool = False
    output_index: int | None = None
    threshold: float = 0.5  # one sigmoid channel per pixel: the foreground is where its probability is at least this


@dataclass(frozen=True)
class Head:
    """An output and how its scores become classes, probabilities and explained scores."""

    kind: str
    activation: str  # what made the model's own output from the pre-activation: softmax, sigmoid or linear
    size: int  # the output's last axis
    index: int = 0  # value: the element explained
    shape: tuple[int | None, ...] = ()  # the output's shape without the batch axis
    threshold: float = 0.5  # one sigmoid channel per pixel: foreground where p ≥ this

    @property
    def classes(self) -> int:
        """How many classes can be explained (a binary head's two, a value's one)."""
        if self.kind == "binary" or (self.kind == "pixels" and self.size == 1):
            return 2
        return 1 if self.kind == "value" else self.size

    @property
    def multi_label(self) -> bool:
        return self.kind == "labels"


def detect(shape: tuple[int | None, ...], activation: str, multi_label: bool = False,
           output_index: int | None = None, threshold: float = 0.5) -> Head:
    """The head of an output of `shape` (without batch) ended by `activation`; BadArgument or ExplainError where no
    head fits, or the options ask what the output cannot give."""
    if len(shape) in (3, 4):  # (h, w, classes), or a volume's (d, h, w, classes)
        if multi_label or output_index is not None:
            raise BadArgument("--multi-label" if multi_label else "--output-index",
                              f"the output is per pixel, {(None, *shape)}: explain segment reads it")
        return Head("pixels", activation, int(shape[-1] or 0), shape=shape, threshold=threshold)
    if len(shape) != 1 or not shape[0]:
        raise ExplainError(f"{UNDERSTOOD}; this model's output is {(None, *shape)}")
    size = int(shape[0])
    if output_index is not None:
        if not 0 <= output_index < size:
            raise BadArgument("--output-index", f"{output_index} is not an element of the output (0 to {size - 1})")
        return Head("value", activation, size, index=output_index, shape=shape)
    if size == 1:
        if multi_label:
            raise BadArgument("--multi-label", "the output has one unit: a binary or a value head, not labels")
        return Head("binary" if activation == "sigmoid" else "value", activation, 1, shape=shape)
    if multi_label and activation == "softmax":
        raise BadArgument("--multi-label", "the model ends in a softmax: its classes exclude each other")
    kind = "labels" if multi_label or activation == "sigmoid" else "classes"
    return Head(kind, activation, size, shape=shape)


# --- a segmentation's pixels in numpy (a model file's, perturbed images') ------------------------------------------


def numpy_classes(head: Head, probabilities: Any) -> Any:
    """(n, h, w) each pixel's class from its probabilities (n, h, w, classes): the most probable (one sigmoid channel,
    given as (1 − p, p): 1 where p ≥ the threshold), as pixel_classes does on tensors."""
    import numpy as np

    if head.size == 1:
        return (probabilities[..., 1] >= head.threshold).astype(np.int64)
    return np.argmax(probabilities, axis=-1)


def numpy_masks(head: Head, probabilities: Any) -> Any:
    """(n, h, w, classes) 0 / 1: where each class is predicted, as pixel_masks does on tensors."""
    import numpy as np

    if several_per_pixel(head):
        return (probabilities >= 0.5).astype(np.float32)
    return np.eye(head.classes, dtype=np.float32)[numpy_classes(head, probabilities)]


def numpy_region_means(probabilities: Any, regions: Any) -> Any:
    """(n, classes) each class's mean probability over its region, Σ p · R / max(Σ R, 1), from probabilities
    (n, h, w, classes) and regions (n or 1, h, w, classes), 1 inside."""
    import numpy as np

    axes = tuple(range(1, np.ndim(probabilities) - 1))  # a picture's (h, w), a volume's (d, h, w)
    return (probabilities * regions).sum(axis=axes) / np.maximum(regions.sum(axis=axes), 1.0)


# --- on tensors ------------------------------------------------------------------------------------------------------


def probabilities(head: Head, raw: Tensor) -> Tensor:
    """(b, classes): each class's probability from the pre-activation output; a value head's value."""
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    if head.kind == "labels":
        return tf.sigmoid(raw)
    if head.kind == "binary":
        positive = tf.sigmoid(raw)
        return tf.concat([1.0 - positive, positive], axis=-1)
    if head.kind == "value":
        return raw[:, head.index:head.index + 1]
    if head.activation == "sigmoid":  # a sigmoid over several classes that was asked to be one label per image
        return tf.sigmoid(raw)
    return tf.nn.softmax(raw, axis=-1)  # a softmax, or logits: their probabilities are the softmax


def embedding(head: Head, raw: Tensor) -> Tensor:
    """The model's own output from its pre-activation scores, flattened to (n, D): what a likeness compares."""
    import tensorflow as tf

    out = tf.nn.softmax(raw) if head.activation == "softmax" else tf.sigmoid(raw) if head.activation == "sigmoid" \
        else raw
    return tf.reshape(out, [tf.shape(out)[0], -1])


def class_scores(head: Head, raw: Tensor, score: str = "logit") -> Tensor:
    """(rows, classes): the score each class is explained by: the logit (binary: −z and z; a value: itself), or with
    score="probability" the class's probability."""
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    if head.kind == "value":
        return raw[:, head.index:head.index + 1]
    if score == "probability":
        return probabilities(head, raw)
    if head.kind == "binary":
        return tf.concat([-raw, raw], axis=-1)
    return raw


def pixel_scores(head: Head, raw: Tensor) -> Tensor:
    """(b, h, w, classes): each pixel's pre-activation score per class (one sigmoid channel: −z and z)."""
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    return tf.concat([-raw, raw], axis=-1) if head.size == 1 else raw


def pixel_probabilities(head: Head, raw: Tensor) -> Tensor:
    """(b, h, w, classes): each pixel's probability per class."""
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    if head.size == 1:
        positive = tf.sigmoid(raw)
        return tf.concat([1.0 - positive, positive], axis=-1)
    return tf.sigmoid(raw) if head.activation == "sigmoid" else tf.nn.softmax(raw, axis=-1)


def pixel_masks(head: Head, raw: Tensor) -> Tensor:
    """(b, h, w, classes) float 0 / 1: where each class is predicted (the most probable class of each pixel; for
    sigmoids over several classes, each class at probability ≥ 0.5)."""
    import tensorflow as tf

    if several_per_pixel(head):  # σ(z) ≥ 0.5 where z ≥ 0
        return tf.cast(tf.cast(raw, tf.float32) >= 0, tf.float32)
    return tf.one_hot(pixel_classes(head, raw), head.classes, dtype=tf.float32)


def pixel_classes(head: Head, raw: Tensor) -> Tensor:
    """(b, h, w) int32: each pixel's most probable class, argmax of its scores (softmax and sigmoid keep their order;
    one sigmoid channel: 1, the foreground, where σ(z) ≥ the head's threshold)."""
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    if head.size == 1:
        return tf.cast(tf.sigmoid(raw[..., 0]) >= head.threshold, tf.int32)
    return tf.argmax(raw, axis=-1, output_type=tf.int32)


def several_per_pixel(head: Head) -> bool:
    """Sigmoids over several classes: a pixel may show any number of them (each at probability ≥ 0.5)."""
    return head.activation == "sigmoid" and head.size > 1


def pixel_shares(head: Head, raw: Tensor, classes: Tensor, inside: Tensor | None = None) -> Tensor:
    """(b, classes) each class's share of the pixels, from `classes` = pixel_classes(head, raw); with `inside`
    (b, h, w), of the pixels where it is 1 (the picture's part of a letterbox): Σ inside·[class = c] / Σ inside."""
    import tensorflow as tf

    b = tf.shape(classes)[0]
    weights = None if inside is None else tf.cast(inside, tf.float32)
    if weights is None:  # every pixel counts: no weights to make or multiply
        total = tf.cast(tf.reduce_prod(tf.shape(classes)[1:]), tf.float32)
    else:
        total = tf.maximum(tf.reduce_sum(weights, axis=(1, 2)), 1.0)[:, None]
    if several_per_pixel(head):
        masks = pixel_masks(head, raw)
        axes = list(range(1, len(masks.shape) - 1))
        return tf.reduce_sum(masks if weights is None else masks * weights[..., None], axis=axes) / total
    flat_weights = None if weights is None else tf.reshape(weights, [b, -1])
    counts = tf.math.bincount(tf.reshape(classes, [b, -1]), weights=flat_weights, minlength=head.classes,
                              maxlength=head.classes, axis=-1, dtype=tf.float32)
    return counts / total


def class_region(head: Head, raw: Tensor, classes: Tensor, chosen: Tensor) -> Tensor:
    """(b, h, w) float 0 / 1: where image i's class chosen[i] is predicted, from `classes` = pixel_classes(head, raw)."""
    import tensorflow as tf

    if several_per_pixel(head):
        return tf.cast(tf.gather(tf.cast(raw, tf.float32), chosen, axis=len(raw.shape) - 1, batch_dims=1) >= 0,
                       tf.float32)
    return tf.cast(tf.equal(classes, tf.reshape(chosen, [-1] + [1] * (len(classes.shape) - 1))), tf.float32)


def class_pixels(head: Head, raw: Tensor, chosen: Tensor, score: str = "logit") -> Tensor:
    """(b, h, w): image i's score of class chosen[i] at each pixel, its pre-activation score or its probability."""
    import tensorflow as tf

    values = pixel_scores(head, raw) if score == "logit" else pixel_probabilities(head, raw)
    return tf.gather(values, chosen, axis=len(values.shape) - 1, batch_dims=1)
