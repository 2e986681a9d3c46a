"""Twins of a layer: new objects of its class that share its variables, with something changed (an activation).

The user's layer is left as it was, and what changes the model's weights changes what a twin computes; no second copy
of the weights is held. (copy.copy would serialise a Keras layer and load it back, with variables of its own.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

Tensor = Any


def with_activation(step: Step, activation: Callable[[Tensor], Tensor]) -> Step:
    """The step calling a twin of its layer with another activation: same variables, and the user's layer left
    as it was."""
    return dataclasses.replace(step, layer=activated(step.layer, activation))


def activated(layer: Any, activation: Callable[[Tensor], Tensor]) -> Any:
    """A twin of the layer with another activation."""
    double = twin(layer)
    object.__setattr__(double, "activation", activation)
    return double


def twin(layer: Any) -> Any:
    """A new object of the layer's class with the same attributes, so the same variables: what changes the model's
    weights changes what the twin computes, and no second copy of them is held. (copy.copy would serialise a Keras
    layer and load it back, with variables of its own.)"""
    double = object.__new__(type(layer))
    double.__dict__.update(vars(layer))
    return double


def is_activation_layer(layer: Any) -> bool:
    return type(layer).__name__ in ("Activation", "Softmax")


def activation_name(layer: Any) -> str:
    if type(layer).__name__ == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"
