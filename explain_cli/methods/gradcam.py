"""The Grad-CAM family: channel or pixel weights from the gradient of the class score ∂y_c/∂A."""

from __future__ import annotations

from explain_cli.methods.base import MethodInputs, Tensor, grid_axes, weighted_sum


def gradcam(m: MethodInputs) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ReLU(Σ_k α_k A^k), α_k = mean_ij ∂y_c/∂A^k_ij."""
    import tensorflow as tf

    return weighted_sum(tf.reduce_mean(m.gradients, axis=grid_axes(m.gradients)), m.activations)


def gradcam_plus_plus(m: MethodInputs) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018): α_k = Σ_ij a_ij ReLU(g_ij), a = g² / (2g² + Σ_ab A_ab g³).

    With the paper's exponential score Y = exp(y), the higher derivatives are powers of g = ∂y/∂A
    times exp(y), which cancels in a; so the closed form needs only g.
    """
    import tensorflow as tf

    g, a = m.gradients, m.activations
    g2, g3 = tf.square(g), tf.pow(g, 3)
    denominator = 2.0 * g2 + tf.reduce_sum(a, axis=grid_axes(a), keepdims=True) * g3
    safe = tf.where(denominator != 0.0, denominator, tf.ones_like(denominator))
    alpha = tf.where(denominator != 0.0, g2 / safe, tf.zeros_like(g2))
    return weighted_sum(tf.reduce_sum(alpha * tf.nn.relu(g), axis=grid_axes(g)), a)


def xgradcam(m: MethodInputs) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): α_k = Σ_ij (A^k_ij / Σ_ab A^k_ab) ∂y_c/∂A^k_ij."""
    import tensorflow as tf

    a = m.activations
    total = tf.reduce_sum(a, axis=grid_axes(a), keepdims=True)
    share = a / tf.where(total != 0.0, total, tf.ones_like(total))
    return weighted_sum(tf.reduce_sum(share * m.gradients, axis=grid_axes(a)), a)


def hirescam(m: MethodInputs) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): ReLU(Σ_k ∂y_c/∂A^k ⊙ A^k), element-wise, no pooling."""
    import tensorflow as tf

    return tf.nn.relu(tf.reduce_sum(m.gradients * m.activations, axis=-1))


def layercam(m: MethodInputs) -> Tensor:
    """LayerCAM (Jiang et al. 2021): ReLU(Σ_k ReLU(∂y_c/∂A^k) ⊙ A^k), element-wise."""
    import tensorflow as tf

    return tf.nn.relu(tf.reduce_sum(tf.nn.relu(m.gradients) * m.activations, axis=-1))
