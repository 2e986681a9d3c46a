"""Grad-CAM (Selvaraju et al. 2017)."""

from __future__ import annotations

from typing import Any


def gradcam(activations: Any, gradients: Any) -> Any:
    """map = ReLU(Σ_k α_k A^k) with α_k = mean_ij ∂y_c/∂A^k_ij, per image."""
    import tensorflow as tf

    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
