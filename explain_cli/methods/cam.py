"""Gradient-free maps from the activations alone (and, for CAM, the classifier's weights)."""

from __future__ import annotations

from explain_cli.methods.base import MethodInputs, Tensor, weighted_sum


def cam(m: MethodInputs) -> Tensor:
    """CAM (Zhou et al. 2016): ReLU(Σ_k w^c_k A^k), w^c the Dense weights of class c after global pooling."""
    return weighted_sum(m.class_weights, m.activations)


def eigencam(m: MethodInputs) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): A projected on its first principal direction, A·v₁.

    v₁ is the first right singular vector of A as a (positions, k) matrix (not centred, as in the paper); its
    sign is chosen so the map correlates positively with the activations' channel sum. Class-agnostic.
    """
    import tensorflow as tf

    a = m.activations
    shape = tf.shape(a)
    flat = tf.reshape(a, [shape[0], -1, shape[-1]])  # (rows, positions, k): a picture's h·w, a volume's d·h·w
    _, _, v = tf.linalg.svd(flat, full_matrices=False)
    projection = tf.einsum("npk,nk->np", flat, v[:, :, 0])
    total = tf.reduce_sum(flat, axis=-1)
    centred = lambda t: t - tf.reduce_mean(t, axis=1, keepdims=True)  # noqa: E731
    sign = tf.sign(tf.reduce_sum(centred(projection) * centred(total), axis=1, keepdims=True))
    sign = tf.where(sign == 0.0, tf.ones_like(sign), sign)
    return tf.nn.relu(tf.reshape(projection * sign, shape[:-1]))
