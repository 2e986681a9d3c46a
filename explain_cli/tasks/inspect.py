"""Looking inside a model: the layers a method can explain, each layer's activations, and the picture a class
responds to most (class visualisation). The Explainer's `layers`, `activations` and `classviz`, and the commands of
the same names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli.errors import BadArgument, ExplainError
from explain_cli.results import Activations, ClassVisualisation, Layer, frozen_array
from explain_cli.io import files
from explain_cli.render import heatmaps
from explain_cli.running import pipeline
from explain_cli.inputs.sources import Source
from explain_cli.steps import activations as inside
from explain_cli.steps.activations import ClassVizSettings


class Inspecting:
    """What an Explainer shows of its model's inside; it gives `_layered()` (the graph), `_loaded` (the Keras model),
    `_step` (compile once), `_run`, `default_layer`, `outputs`, `model`, `input_size` and `name`."""

    _layered: Callable[[], Any]
    _loaded: Any
    _step: Callable[..., Any]
    _run: Callable[..., Any]
    default_layer: str | None
    input_size: tuple[int, int, int]
    name: str
    label_set: Any
    _suiting: Callable[..., Any]

    @property
    def outputs(self) -> list[str]:
        raise NotImplementedError

    @property
    def model(self) -> Any:
        raise NotImplementedError

    def layers(self) -> list[Layer]:
        """The layer outputs a method can explain: feature maps, and a transformer's tokens on their patch grid; the
        default marked (for a model of several outputs that is a detector, the layer `explain detect` takes)."""
        from explain_cli.tasks.detection_steps import default_if_detector

        graph = self._layered()
        default = self.default_layer
        if len(self.outputs) > 1:
            default = default_if_detector(self.model, graph, *self.input_size[:2]) or default
        return [Layer(p.name, tuple(p.grid_shape), p.kind, p.is_tokens, p.name == default, p.describe())
                for p in graph.explainable()]

    def output_layers(self) -> list[Layer]:
        """The model's outputs, by name and shape: one to choose with `output` where there are several."""
        graph = self._layered()
        return [Layer(name, tuple(graph.find(name).shape), "output", False, False, str(graph.find(name).shape) +
                      " output") for name in self.outputs]

    def inputs_at(self, layer: str) -> list[str]:
        """The model's inputs a layer's output depends on: after inputs merge, a map is of them all, at the merged
        layer's resolution."""
        from explain_cli.model import graph as graph_module

        graph = self._layered()
        point = graph.find(layer)
        steps = graph_module.needed(graph.steps, set(graph.step(point.step).outputs))
        read = {number for step in steps for _, number in step.inputs}
        names = graph_module.input_names(self.model)
        return [name for number, name in enumerate(names) if number in read] if names else []

    def activation_layers(self, layers: Sequence[str] = (), max_layers: int = 8) -> tuple[list[str], int]:
        """The layers whose activations are drawn: those named (BadArgument for one with no 4-D output), or every
        convolution and pooling layer, at most `max_layers` spread evenly; and how many there were to choose from."""
        graph = self._layered()
        if not layers:
            return inside.default_activation_layers(graph, max_layers)
        try:
            points = [graph.find(layer) for layer in layers]
        except ExplainError as error:
            raise BadArgument("--layer", str(error)) from None
        flat = [p.name for p in points if not p.explainable]
        if flat:
            raise BadArgument("--layer", f"{flat[0]!r} has no 4-D output (or tokens on a grid) to draw")
        return [p.name for p in points], len(points)

    def activation_step(self, layers: Sequence[str]) -> pipeline.Compute:
        """A pipeline compute step: a uint8 batch -> [(b, h, w, c) per layer], from one forward pass, compiled once."""
        names = tuple(layers)
        step = self._step(("activations", names), lambda: inside.compile_activations(self._loaded, self._layered(),
                                                                                        names))
        return lambda batch, sources: step(batch)

    def activations(self, images: Any, layers: Sequence[str] = (), max_layers: int = 8,
                    errors: str = "raise") -> list[Activations]:
        """Each image's activations at `layers` (default: the convolution and pooling layers, at most `max_layers`
        spread evenly), as `explain activations` draws them."""
        drawn, _ = self.activation_layers(layers, max_layers)

        def finish(source: Any, original: np.ndarray, row: int, per_layer: Any) -> pipeline.ImageResult:
            value = Activations(source.key, {name: frozen_array(batch[row]) for name, batch in zip(drawn, per_layer)})
            return pipeline.ImageResult(source, values=[value])

        return [r.values[0] for r in self._run(images, lambda made: made.activation_step(drawn), finish, errors)]

    def classviz(self, class_: int | str, settings: ClassVizSettings | None = None,
                 every: int = 0) -> ClassVisualisation:
        """The picture the model finds most like `class_` (a number, a label or a WordNet id), by gradient ascent
        (steps/activations.class_visualisation), with a snapshot every `every` steps (0: none). Under "auto" precision
        it computes in fp32, as its gradients run down to the pixels."""
        from explain_cli.steps import targets

        made = self._suiting((), also=("classviz",))
        class_index = targets.resolve_class(self.label_set, class_)
        final, snapshots, logits = inside.class_visualisation(made._loaded, made._layered(), class_index,
                                                              settings or ClassVizSettings(), every)
        return ClassVisualisation(class_index, self.label_set.name(class_index), frozen_array(final),
                                  tuple((step, frozen_array(p)) for step, p in snapshots),
                                  tuple(float(v) for v in logits))


def activation_grids(out_dir: Path, layers: Sequence[str], max_channels: int, model: str = "") -> pipeline.Finish:
    """A finish step for `explain activations`: one channel-grid PNG per layer, named after it."""

    def finish(source: Source, original: np.ndarray, row: int, per_layer: object) -> pipeline.ImageResult:
        written = files.FileSet(out_dir)
        records = []
        with written.complete_or_removed():
            for layer, batch in zip(layers, per_layer):
                grid = heatmaps.channel_grid(batch[row][..., :max_channels])
                name = source.stem.with_name(f"{source.stem.name}.activations.{files.safe_label(layer)}.png")
                written.write(name.as_posix(), heatmaps.encode(grid, "png"))
                records.append({"image": source.shown, "model": model, "layer": layer, "method": "activations",
                                "grid": name.as_posix()})
        return pipeline.ImageResult(source, records=records)

    return finish
