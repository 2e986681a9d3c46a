"""What every method receives, and the pieces they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

Tensor = Any  # tf.Tensor; this package imports TensorFlow only inside functions


@dataclass(frozen=True)
class MethodInputs:
    """One row per explained (image, class): rows = classes × images, class-major."""

    activations: Tensor  # A: (rows, h, w, k), the layer's output; (rows, d, h, w, k) for a volume or a clip
    gradients: Tensor | None = None  # ∂y_c/∂A, same shape (None unless the method asks)
    class_weights: Tensor | None = None  # (rows, k): a GAP→Dense head's weights for the row's class
    images: Tensor | None = None  # (rows, H, W, C): the model's preprocessed input, for forward-only methods
    classes: Tensor | None = None  # (rows,): the class each row explains
    targets: Callable[[Tensor, Tensor], Tensor] | None = None  # (n preprocessed inputs, a row) -> (n,) the row's score
    max_masks: int = 64  # Score-CAM: how many channels become masks
    attentions: tuple[Tensor, ...] = ()  # every attention layer's scores (rows, heads, tokens, tokens), in order
    tokens: tuple[int, int, int] | None = None  # those tokens' layout: (tokens before the patches, grid h, grid w)


@dataclass(frozen=True)
class Method:
    """A map function and what it needs from the explain step."""

    compute: Callable[[MethodInputs], Tensor]
    gradients: bool = True  # the head's gradient ∂y_c/∂A
    dense_head: bool = False  # the head must be global average pooling then Dense (CAM)
    forward: bool = False  # runs the whole model again on modified inputs (Score-CAM)
    attention: bool = False  # reads the attention layers' scores (a transformer)


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(Σ_k w_k A^k): channel weights (rows, k) applied to activations (rows, ..., k) of any number of axes."""
    import tensorflow as tf

    return tf.nn.relu(tf.einsum("nk,n...k->n...", weights, activations))


def grid_axes(tensor: Tensor) -> list[int]:
    """The axes between rows and channels: (1, 2) for a picture's (rows, h, w, k), (1, 2, 3) for a volume's."""
    return list(range(1, len(tensor.shape) - 1))


def resized(tensor: Tensor, size: Tensor) -> Tensor:
    """(n, *grid, c) resized to `size` (its grid's new sides), (bi|tri)linear: a volume's (d, h, w) is resized over h and w,
    then over d (a linear resize that keeps one side keeps it exactly)."""
    import tensorflow as tf

    if len(tensor.shape) == 4:
        return tf.image.resize(tensor, size, method="bilinear")
    shape = tf.shape(tensor)
    n, d, c = shape[0], shape[1], shape[-1]
    planes = tf.image.resize(tf.reshape(tensor, tf.concat([[n * d], shape[2:]], 0)), size[1:], method="bilinear")
    across = tf.reshape(planes, [n, d, size[1] * size[2], c])
    return tf.reshape(tf.image.resize(across, [size[0], size[1] * size[2]], method="bilinear"),
                      tf.concat([[n], size, [c]], 0))
