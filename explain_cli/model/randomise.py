"""Cascading randomisation (Adebayo et al. 2018): a copy of the model whose layers, from the logits down,
get random weights stage by stage. A method whose maps stay the same as the model is destroyed is not
explaining the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from explain_cli.model import graph as graph_module
from explain_cli.model import cut as split_module
from explain_cli.errors import ExplainError
from explain_cli.model.loading import LoadedModel


@dataclass(frozen=True)
class Cascade:
    model: LoadedModel  # the copy: the user's model is never changed
    graph: graph_module.Graph
    stages: tuple[tuple[int, str], ...]  # per stage: how many weighted layers are random, the deepest of them
    assign: Callable[[int], None]  # the copy's weights for a stage (0: the trained ones)
    names: dict[str, str]  # the model's layer names -> the copy's (a subclassed model's copy names its own layers)


def cascade(model: LoadedModel, stages: int, seed: int, same_class: bool = False) -> Cascade:
    """A copy of the model and its randomisation stages: stage s makes the top n_s weighted layers random,
    n_s spread evenly from 1 (the logits) to all. Each weight is drawn from a normal of the trained weight's
    own mean and standard deviation (a positive one stays positive), so activations keep their scale. With
    `same_class` the copy is made from the model's config by its own class (a keras-hub detector, whose anchors,
    decoder and preprocessor clone_model would drop with the class), not cloned as a graph."""
    import keras

    try:
        original = model.keras_model
        copy = type(original).from_config(original.get_config()) if same_class else keras.models.clone_model(original)
        copy.set_weights(original.get_weights())
    except Exception as error:  # Keras raises many kinds for models it cannot rebuild from their config
        raise ExplainError(f"{model.name}: cannot copy the model to randomise it (--sanity): {error}") from None
    loaded = dataclasses.replace(model, keras_model=copy)
    # Folded layers hold weights computed when they are made; the cascade assigns weights after compiling.
    graph = dataclasses.replace(graph_module.flatten(copy, model.output, model.input_name), foldable=False,
                                precision=model.precision)
    weighted = _weighted_layers(graph)
    if not weighted:
        raise ExplainError(f"{model.name}: has no weights to randomise (--sanity)")
    counts = sorted({int(c) for c in np.linspace(1, len(weighted), min(stages, len(weighted))).round()})
    rng = np.random.default_rng(seed)
    trained = [[v.numpy() for v in variables] for _, variables in weighted]
    random = [[_like(w, rng) for w in weights] for weights in trained]

    def assign(stage: int) -> None:
        top = 0 if stage == 0 else counts[stage - 1]
        for index, (_, variables) in enumerate(weighted):
            for variable, values in zip(variables, (random if index < top else trained)[index]):
                variable.assign(values)

    # The copy is the same architecture: its layer outputs come in the same order as the model's.
    original = graph_module.flatten(model.keras_model, model.output, model.input_name)
    names = {p.name: q.name for p, q in zip(original.points, graph.points)}
    theirs = {copied: own for own, copied in names.items()}
    stages_ = tuple((c, theirs.get(weighted[c - 1][0], weighted[c - 1][0])) for c in counts)
    return Cascade(loaded, graph, stages_, assign, names)


def _weighted_layers(graph: graph_module.Graph) -> list[tuple[str, list[Any]]]:
    """From the output down, each layer that holds weights of its own (those none of its sublayers hold), once:
    a transformer's blocks are randomised sublayer by sublayer, like a CNN's layers."""
    from explain_cli.model import sublayers as inner

    weighted, seen = [], set()
    for point in reversed(graph.points):
        layer = inner.sublayer(graph.step(point.step).layer, point.path)
        held = {id(w) for child in inner.children(layer) for w in getattr(child, "weights", [])}
        own = [w for w in getattr(layer, "weights", []) if id(w) not in held and id(w) not in seen]
        if own:
            seen.update(id(w) for w in own)
            weighted.append((point.name, own))
    return weighted


def _like(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    values = rng.normal(float(weights.mean()), float(weights.std()), weights.shape)
    return (np.abs(values) if (weights > 0).all() else values).astype(weights.dtype)


def explainers_for(cascade_: Cascade, layer: str, methods: Any, build: Callable[..., Any]) -> dict[str, Any]:
    """The methods compiled once on the copy: assigning weights later needs no new trace."""
    cut = split_module.split(cascade_.graph, cascade_.names.get(layer, layer))
    return {m: build(cascade_.model, cascade_.graph, cut, m) for m in methods}
