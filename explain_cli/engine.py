"""What every task's entry shares: `Explainer` (classes, labels, values, segmentations) and `Detector` (boxes) are one
family with one shape.

    made = explain_cli.load("model.keras")          # an Explainer, or a Detector for an object detector
    made.predict(images)      # ImagePredictions each: top classes, a Segmentation (class map, shares, IoU), Detections
    made.explain(images)      # Explanations; each one's `target` says what was explained: a class, a label,
                              # a region of a class, a box
    made.evaluate(images, methods=("gradcam", "random"))   # an Evaluation
    made.layers()             # the layers a method can explain

Images stream through the batch engine (running/pipeline.py) in batches. A float array is the model's input as it
stands, fed to the entry's `as_input()` view: its own compiled steps over the same model, float32, no preprocessing.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator

from explain_cli.errors import BadArgument, Notes
from explain_cli.inputs import several
from explain_cli.inputs.sources import Canvas
from explain_cli.inputs.sources import key_of as key_of
from explain_cli.methods.perturbation import GREY
from explain_cli.methods.registry import LAYERLESS
from explain_cli.running import pipeline


class Engine:
    """The shape `Explainer` and `Detector` share: how images run through a model's compiled steps, and what the entry
    says about itself. A subclass makes `_model` (a LoadedModel or a runtime's model), `notes` and `layer`."""

    _fill: float = GREY  # what a perturbation hides becomes: grey pixels (0 in the view fed the model's input)
    _model: Any
    notes: Notes
    layer: str | None
    resize: str = "stretch"  # how pictures are fitted to the input: "stretch" or "letterbox"
    display_channels: tuple[int, ...] | None = None  # a picture of N channels: those its maps are drawn on
    cutting: Any = None  # a model of clips: how long videos are cut into them (inputs/grids.Cutting; None: its depth)
    _input_view: Any = None

    # --- what it is ---------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self._model.name)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._model.labels.names)

    @property
    def label_set(self) -> Any:
        """The model's classes (inputs/labels.Labels): names, and a class read from a number, a name or a WordNet id."""
        return self._model.labels

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(height, width, channels) the model takes; images of any size are resized to it."""
        return self._model.height, self._model.width, self._model.channels

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The sides and channels it takes: (height, width, channels), or (depth, height, width, channels) for volumes
        and clips."""
        depth = getattr(self._model, "depth", None)
        return self.input_size if depth is None else (depth, *self.input_size)

    @property
    def takes_grids(self) -> bool:
        """Whether it takes volumes or clips (batch, depth, height, width, channels), not pictures."""
        return getattr(self._model, "depth", None) is not None

    def examples_of(self, found: Any) -> list[Any]:
        """What it explains among the inputs found: a model of volumes or clips reads videos as clips, a folder's
        frames or slices as one example (inputs/grids.py); a model of pictures leaves the volumes and videos found in
        folders alone."""
        from explain_cli.inputs import grids

        if not self.takes_grids:
            return grids.pictures_only(found)
        return grids.for_model(found, self._model.depth, self.cutting or grids.Cutting())

    @property
    def canvas(self) -> Canvas:
        """How pictures are fitted to the model's input, and boxes and maps brought back to their own pixels."""
        return Canvas(self.resize, self._model.height, self._model.width)

    @property
    def held_inputs(self) -> tuple[Any, ...]:
        """A model of several inputs: those held as each example gives them (inputs/held.HeldInput); () for one."""
        return tuple(getattr(self._model, "held", ()))

    @property
    def explained_input(self) -> str | None:
        """A model of several inputs: the one its maps explain, the others held as each example gives them; None for a
        model of one input."""
        return self._model.input_name if self.held_inputs else None

    def layer_for(self, method: str) -> str | None:
        """The layer a method's maps come from: None for those that need none (they perturb the input, or random)."""
        return None if method in LAYERLESS else self.layer

    # --- running ------------------------------------------------------------------------------------------------

    def _batching(self) -> tuple[int, int, str]:
        """(batch size, the pixel limit of a decoded image, how arrays are read)."""
        raise NotImplementedError

    def _run(self, images: Any, make: Callable[[Any], pipeline.Compute], finish: pipeline.Finish,
             errors: str) -> Iterator[pipeline.ImageResult]:
        """Each image's result; `make(entry)` makes the compute step, for pictures from this entry, for arrays given as
        the model's input from its view fed them as they stand (`as_input`)."""
        batch_size, max_pixels, arrays = self._batching()
        if self.held_inputs or several.is_rows(images):
            images = self.examples(images)
        if self.takes_grids:
            from explain_cli.inputs import grids

            images = self.examples_of(list(grids.sources_of(images, arrays)))
        compute = pipeline.by_reading(lambda given: make(self.as_input() if given else self))
        return pipeline.library_results(images, compute, finish, self.input_shape, batch_size, max_pixels, errors,
                                        arrays, self.notes, self.resize, self.display_channels)

    def examples(self, given: Any) -> list[Any]:
        """The Sources of a model of several inputs' examples: {input name: a batch} or rows of {input name: item}
        (inputs/several.py); BadArgument for anything else, or for a model of one input."""
        held = self.held_inputs
        if not held:
            raise BadArgument("images", f"{self.name} takes one input: give its images, not a mapping of inputs")
        if not several.is_rows(given):
            raise BadArgument("images", f"{self.name} takes several inputs ({', '.join(self.input_names)}): give a "
                              "mapping from each input's name to a batch, or rows of such mappings")
        return several.examples(given, self._model.input_name, held)

    @property
    def input_names(self) -> list[str]:
        """The explained input's name and the held ones' ([] for a model of one input)."""
        held = self.held_inputs
        return [self._model.input_name, *(h.name for h in held)] if held else []

    def picture_inputs(self) -> list[str]:
        """A model of several inputs: its picture inputs, each explained in turn ([] for a model of one input)."""
        held = self.held_inputs
        return [] if not held else [self._model.input_name, *(h.name for h in held if h.image)]

    def examples_from(self, table: Any) -> list[Any]:
        """The examples of a model of several inputs in a CSV, one column per input (inputs/several.py)."""
        from pathlib import Path

        if not self.held_inputs:
            raise BadArgument("--inputs", f"{self.name} takes one input: give its images, not a table of inputs")
        return several.from_csv(Path(table), self._model.input_name, self.held_inputs)

    def as_input(self) -> Any:
        """This entry fed arrays that are the model's input as they stand: float32, no preprocessing, perturbed towards
        0; its own compiled steps, the same model, graph and settings."""
        if self._input_view is None:
            view = copy.copy(self)
            view._fill = 0.0
            view._model = self._model.as_input()
            view._fresh_steps()
            view._input_view = self._input_view = view
        return self._input_view

    def _fresh_steps(self) -> None:
        """Forget (or remake) the compiled steps: a view over another input has its own."""
        raise NotImplementedError


def default_method(model: Any) -> str:
    """The method a model is explained by when none is named: gradcam at a layer, or rise for a model file (ONNX,
    LiteRT, a SavedModel folder), which has no layers."""
    from explain_cli.model.files import is_runtime_model

    return "rise" if is_runtime_model(model) else "gradcam"
