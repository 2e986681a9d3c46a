"""Pixel attributions: maps at the model's input resolution from gradients with respect to the pixels.

Each function takes `PixelInputs` (one row per explained (image, class)) and returns (rows, H, W); each has its
entry in methods/registry.py.
Gradients are taken with respect to the raw pixels I in [0, 255], before the model's preprocessing (or to the model's
input itself, for an array given as it stands), and S_c is the class logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from explain_cli.methods.base import Tensor


@dataclass(frozen=True)
class PixelInputs:
    images: Tensor  # (rows, H, W, C) float pixels in [0, 255]; (rows, D, H, W, C) for a volume or a clip
    gradient: Callable[[Tensor], Tensor]  # images (rows, ...) -> ∂S_c/∂I for each row's class
    guided_gradient: Callable[[Tensor], Tensor]  # the same through guided ReLUs
    gradcam: Callable[[], Tensor]  # -> the rows' Grad-CAM maps at input resolution, in [0, 1]
    samples: int = 25  # SmoothGrad
    noise: float = 0.15  # SmoothGrad: σ as a fraction of the input range
    span: Tensor | float = 255.0  # the input's range: 255 for pixels, each row's max − min for an input as it stands
    steps: int = 64  # integrated gradients
    seed: int = 0


def vanilla(p: PixelInputs) -> Tensor:
    """Saliency (Simonyan et al. 2014): max_channels |∂S_c/∂I|."""
    import tensorflow as tf

    return tf.reduce_max(tf.abs(p.gradient(p.images)), axis=-1)


def smoothgrad(p: PixelInputs) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean of vanilla saliency over I + N(0, (σ·span)²) samples, span the
    input's range (255 for pixels)."""
    import tensorflow as tf

    sigma = p.noise * p.span

    def add_sample(i: Tensor, total: Tensor) -> tuple[Tensor, Tensor]:
        noise = tf.random.stateless_normal(tf.shape(p.images), seed=[p.seed, i]) * sigma
        return i + 1, total + tf.reduce_max(tf.abs(p.gradient(p.images + noise)), axis=-1)

    _, total = tf.while_loop(lambda i, _: i < p.samples, add_sample, (0, tf.zeros(tf.shape(p.images)[:-1])))
    return total / float(p.samples)


def integrated_gradient_attributions(p: PixelInputs) -> Tensor:
    """Integrated gradients (Sundararajan et al. 2017) from a black baseline: I · ∫₀¹ ∂S_c/∂I(αI) dα.

    The integral is the trapezoid rule on `steps` intervals; each step is one batched gradient of all
    rows. Σ attributions ≈ S_c(I) − S_c(0) (completeness).
    """
    import tensorflow as tf

    steps = p.steps

    def add_step(i: Tensor, total: Tensor) -> tuple[Tensor, Tensor]:
        alpha = tf.cast(i, tf.float32) / float(steps)
        weight = tf.where((i == 0) | (i == steps), 0.5, 1.0)
        return i + 1, total + weight * p.gradient(alpha * p.images)

    _, total = tf.while_loop(lambda i, _: i <= steps, add_step, (0, tf.zeros_like(p.images)))
    return p.images * total / float(steps)


def integrated_gradients(p: PixelInputs) -> Tensor:
    """|Σ_channels IG attribution| per pixel."""
    import tensorflow as tf

    return tf.abs(tf.reduce_sum(integrated_gradient_attributions(p), axis=-1))


def guided_backprop(p: PixelInputs) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015): max_channels |∂S_c/∂I| through guided ReLUs."""
    import tensorflow as tf

    return tf.reduce_max(tf.abs(p.guided_gradient(p.images)), axis=-1)


def guided_gradcam(p: PixelInputs) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation × the upsampled Grad-CAM map."""
    return guided_backprop(p) * p.gradcam()
