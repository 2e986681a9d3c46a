"""Maps read off a transformer's attention rather than its gradients."""

from __future__ import annotations

from explain_cli.methods.base import MethodInputs, Tensor


def attention_rollout(m: MethodInputs) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): R = Â_L ⋯ Â_1 with Â_l = rows-normalised(mean over heads of A_l + I),
    read at the class token's row (the mean row without one), its patch columns laid out on the grid.

    The identity stands for the residual connection around each attention. Class-agnostic: the same map for
    every class of an image.
    """
    import tensorflow as tf

    extra, h, w = m.tokens
    rollout = None
    for scores in m.attentions:  # (rows, heads, tokens, tokens)
        mixed = tf.reduce_mean(tf.cast(scores, tf.float32), axis=1)
        mixed = mixed + tf.eye(tf.shape(mixed)[-1], dtype=mixed.dtype)
        mixed = mixed / tf.reduce_sum(mixed, axis=-1, keepdims=True)
        rollout = mixed if rollout is None else tf.matmul(mixed, rollout)
    row = rollout[:, 0, :] if extra else tf.reduce_mean(rollout, axis=1)
    return tf.reshape(row[:, extra:], [-1, h, w])
