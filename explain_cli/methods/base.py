"""What every method receives, and the pieces they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

Tensor = Any  # tf.Tensor; this package imports TensorFlow only inside functions


@dataclass(frozen=True)
class MethodInputs:
    """One row per explained (image, class): rows = classes × images, class-major."""

    activations: Tensor  # A: (rows, h, w, k), the layer's output
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
    """ReLU(Σ_k w_k A^k): channel weights (rows, k) applied to activations (rows, h, w, k)."""
    import tensorflow as tf

    return tf.nn.relu(tf.einsum("nk,nhwk->nhw", weights, activations))
