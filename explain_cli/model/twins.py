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
    layer and load it back, with variables of its own.)

    A Keras layer wraps its own `build` (and `quantize`) when it is made, bound to itself: the twin gets wrappers
    bound to the twin, so a twin of a layer left unbuilt (a sublayer its owner builds on first call) builds itself,
    not the user's layer, and what it builds is tracked by the twin alone."""
    import keras

    if not isinstance(layer, keras.Layer):
        double = object.__new__(type(layer))
        double.__dict__.update(vars(layer))
        return double
    double = type(layer).__new__(type(layer))  # Keras' __new__ binds build's wrapper to the new object
    own = {name: value for name, value in vars(double).items() if name in _BOUND_WRAPPERS}
    double.__dict__.update(vars(layer))
    double.__dict__.update(own)
    if not layer.built:  # it may yet make variables: into lists of its own, never the user's layer's
        tracked = {name: list(getattr(layer, name, [])) for name in _TRACKED}
        del double.__dict__["_tracker"]
        double._initialize_tracker()
        for name, values in tracked.items():
            getattr(double, name).extend(values)
    return double


_BOUND_WRAPPERS = ("build", "quantize")
_TRACKED = ("_trainable_variables", "_non_trainable_variables", "_layers", "_metrics", "_seed_generators")


def is_activation_layer(layer: Any) -> bool:
    return type(layer).__name__ in ("Activation", "Softmax")


def activation_name(layer: Any) -> str:
    if type(layer).__name__ == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"
