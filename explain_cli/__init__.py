"""explain: show why an image model decided what it decided.

    import explain_cli
    made = explain_cli.load("model.keras")         # a built-in name, any model file, or a keras.Model: its
                                                   # Explainer, or its Detector for an object detector
    explanations = made.explain("photos/")         # each one's .target: a class, a label, a region, a box
    explanations[0].overlay()                      # a PIL image; in a notebook, an Explanation shows itself
    made.predict("photos/")                        # top classes, a Segmentation, or Detections

Importing this package is cheap on purpose: its names are resolved when first used, and TensorFlow loads only
when a model does, so `import explain_cli` and `explain --help` stay instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from explain_cli.entry import load
    from explain_cli.explainer import Explainer
    from explain_cli.detector import Detector
    from explain_cli.results import Detection, Similarity
    from explain_cli.settings import DetectorSettings, Method, Reading, Running, Settings
    from explain_cli.steps.activations import ClassVizSettings
    from explain_cli.callbacks import ExplainCallback
    from explain_cli.errors import BadArgument, BadInput, ExplainError
    from explain_cli.io.files import Prediction
    from explain_cli.results import (Activations, ClassVisualisation, Detections, Evaluation, Explanation, ImagePredictions, Layer, MethodSummary,
                                     Segmentation, Target, ious)

_WHERE = {
    "load": "explain_cli.entry",
    "Explainer": "explain_cli.explainer",
    "Detector": "explain_cli.detector",
    "Detection": "explain_cli.results",
    "Similarity": "explain_cli.results",
    "Settings": "explain_cli.settings",
    "Explanation": "explain_cli.results",
    "Activations": "explain_cli.results",
    "ClassVisualisation": "explain_cli.results",
    "ClassVizSettings": "explain_cli.steps.activations",
    "DetectorSettings": "explain_cli.settings",
    "Method": "explain_cli.settings",
    "Reading": "explain_cli.settings",
    "Running": "explain_cli.settings",
    "ImagePredictions": "explain_cli.results",
    "Layer": "explain_cli.results",
    "Target": "explain_cli.results",
    "Segmentation": "explain_cli.results",
    "Detections": "explain_cli.results",
    "ious": "explain_cli.results",
    "Evaluation": "explain_cli.results",
    "MethodSummary": "explain_cli.results",
    "Prediction": "explain_cli.io.files",
    "ExplainCallback": "explain_cli.callbacks",
    "ExplainError": "explain_cli.errors",
    "BadArgument": "explain_cli.errors",
    "BadInput": "explain_cli.errors",
}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'explain_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
