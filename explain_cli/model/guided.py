"""Guided backpropagation (Springenberg et al. 2015): the graph with its ReLUs passing only positive gradients."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from explain_cli.model.graph import Graph
from explain_cli.model.twins import activated, activation_name, with_activation

Tensor = Any


# Activations guided by guided backpropagation, by their function's or layer class's name.
_RELU_FAMILY = ("relu", "relu6", "leaky_relu")
_RELU_LAYERS = ("ReLU", "LeakyReLU")


def guided(graph: Graph) -> Graph:
    """The graph with every ReLU-family activation guided (Springenberg et al. 2015): its backward pass is
    ReLU(upstream) · f'(x), so only positive gradients pass, and only where f passes them on.

    Guided are ReLU and LeakyReLU layers (any max_value, threshold, negative_slope: ReLU6 is
    ReLU(6)), and the relu / relu6 / leaky_relu activation of any layer (Conv2D, Dense, Activation).
    The forward pass is unchanged, and so is the user's model.
    """
    from explain_cli.model import sublayers as inner

    steps = []
    for step in graph.steps:
        if type(step.layer).__name__ in _RELU_LAYERS:
            step = dataclasses.replace(step, layer=_guide(step.layer), takes_training=False)
        elif activation_name(step.layer) in _RELU_FAMILY:
            step = with_activation(step, _guide(step.layer.activation))
        else:  # the sublayers of a subclassed layer, guided while it runs
            relus = [path for path, layer in inner.descendants(step.layer) if _is_relu(layer)]
            step = dataclasses.replace(step, hooks=(*step.hooks, *((path, _guided_call) for path in relus)))
        steps.append(step)
    return dataclasses.replace(graph, steps=tuple(steps))


def _is_relu(layer: Any) -> bool:
    return type(layer).__name__ in _RELU_LAYERS or activation_name(layer) in _RELU_FAMILY


def _guided_call(layer: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An inner.Wrapper for a ReLU-family sublayer: its call with the activation guided."""
    if type(layer).__name__ in _RELU_LAYERS:
        return lambda original: lambda inputs, *args, **kwargs: _guide(original)(inputs)
    double = activated(layer, _guide(layer.activation))
    return lambda original: double.call


def _guide(activation: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """An element-wise activation f whose gradient is ReLU(upstream) · f'(x)."""
    import tensorflow as tf

    @tf.custom_gradient
    def guided_activation(x: Tensor) -> tuple[Tensor, Callable]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = activation(x)

        def backward(upstream: Tensor) -> Tensor:
            # f is element-wise, so the vector-Jacobian product with ReLU(upstream) is ReLU(upstream) · f'(x).
            return tape.gradient(y, x, output_gradients=tf.nn.relu(upstream))

        return y, backward

    return guided_activation
