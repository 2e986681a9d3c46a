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

from explain_cli.errors import Notes
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
    def canvas(self) -> Canvas:
        """How pictures are fitted to the model's input, and boxes and maps brought back to their own pixels."""
        return Canvas(self.resize, self._model.height, self._model.width)

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
        compute = pipeline.by_reading(lambda given: make(self.as_input() if given else self))
        return pipeline.library_results(images, compute, finish, self.input_size, batch_size, max_pixels, errors,
                                        arrays, self.notes, self.resize)

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

