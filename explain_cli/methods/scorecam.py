"""Score-CAM: channel weights from how well each channel, used as a mask, keeps the class score."""

from __future__ import annotations

from explain_cli.methods.base import MethodInputs, Tensor, grid_axes, resized, weighted_sum


def scorecam(m: MethodInputs) -> Tensor:
    """Score-CAM (Wang et al. 2020): ReLU(Σ_k w_k A^k), w = softmax_k(y_c(X ⊙ norm(up(A^k)))).

    Only the `max_masks` channels of highest mean activation are used (the others weigh 0): each
    mask costs a forward pass of the whole model. Masks multiply the preprocessed input.
    """
    import tensorflow as tf

    a = m.activations
    k = int(a.shape[-1]) if a.shape[-1] is not None else tf.shape(a)[-1]
    keep = min(m.max_masks, k) if isinstance(k, int) else m.max_masks
    strongest = tf.math.top_k(tf.reduce_mean(a, axis=grid_axes(a)), k=keep).indices  # (rows, keep)
    size = tf.shape(m.images)[1:-1]
    axes = grid_axes(a)
    spatial = [axis - 1 for axis in axes]  # a row's own grid axes

    def weights_of_row(row: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        activations, image, channels, index = row
        chosen = tf.gather(activations, channels, axis=-1)  # (h, w, keep)
        masks = resized(chosen[None], size)[0]  # (H, W, keep)
        low = tf.reduce_min(masks, axis=spatial, keepdims=True)
        high = tf.reduce_max(masks, axis=spatial, keepdims=True)
        masks = (masks - low) / tf.where(high > low, high - low, tf.ones_like(high))
        last = len(axes)
        masked = image[None] * tf.transpose(masks, [last, *spatial])[..., None]  # (keep, H, W, C)
        scores = m.targets(masked, index)  # the row's score (its class's logit, or a region's sum) of each masked input
        weights = tf.nn.softmax(scores)
        return tf.scatter_nd(channels[:, None], weights, [tf.shape(activations)[-1]])

    weights = tf.map_fn(
        weights_of_row,
        (a, m.images, strongest, tf.range(tf.shape(a)[0])),
        fn_output_signature=tf.TensorSpec([None], a.dtype),
    )
    return weighted_sum(weights, a)
