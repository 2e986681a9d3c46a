"""The one entry for every task: `load` reads what a model is and makes its Explainer or its Detector.

    made = explain_cli.load("model.keras")        # a classifier, a tagger, a value head, a segmenter or a detector
    made.predict(images); made.explain(images); made.evaluate(images); made.layers()

Both share one shape (engine.Engine). A model is a detector when it is a keras-hub ObjectDetector, or has two outputs
(boxes and scores) and no `output` picks one of them, or when a detector's outputs are named (`boxes_output` and the
like, a YOLO's three outputs); otherwise the Explainer reads its head (classes, labels, a value, classes per pixel).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from explain_cli.detector import Detector
from explain_cli.errors import BadArgument
from explain_cli.explainer import Explainer

TASKS = ("auto", "classify", "segment", "detect")
DETECTOR_OUTPUTS = ("boxes_output", "scores_output", "objectness_output", "box_format", "output_layout")


def load(model: Any, task: str = "auto", **options: Any) -> Explainer | Detector:
    """The entry for `model` (a keras.Model, a built-in name or any file the command line takes): a Detector for an
    object detector (`task="detect"`), else an Explainer (`"classify"`, `"segment"`: its head says which); `options`
    are that entry's keyword arguments."""
    from explain_cli.errors import choose

    choose("--task", "task", task, TASKS)
    detecting = task == "detect" or (task == "auto" and is_detector(model, options.get("output"),
                                                                      any(options.get(n) for n in DETECTOR_OUTPUTS)))
    if detecting:
        if options.get("output"):
            raise BadArgument("--output", "picks one output of a model that is no detector; a detector reads its boxes "
                              "and scores outputs (boxes_output, scores_output)")
        return Detector(model, **_taken(Detector, options, "an object detector"))
    named = [n for n in DETECTOR_OUTPUTS if options.get(n) is not None]
    if named:
        raise BadArgument(f"--{named[0].replace('_', '-')}", f"reads an object detector's outputs, not a {task}'s")
    made = Explainer(model, **_taken(Explainer, options, "a model that is no detector"))
    if task == "segment":
        made.check_segmenter()
    return made


def is_detector(model: Any, output: str | None = None, named: bool = False) -> bool:
    """Whether `model` is an object detector, read without loading a file: a keras-hub ObjectDetector, or a model of
    two outputs (boxes and scores) when no `output` picks one of them, or any model whose detector outputs are `named`
    (a YOLO's three outputs)."""
    if output:
        return False
    if named:
        return True
    if isinstance(model, (str, Path)):
        return _detector_file(Path(model))
    outputs = getattr(model, "outputs", None)
    kinds = [type(model).__name__, *(t.__name__ for t in type(model).__mro__)]
    return any("ObjectDetector" in k for k in kinds) or (isinstance(outputs, list) and len(outputs) == 2)


def _detector_file(path: Path) -> bool:
    """A .keras archive's config says it is a detector, or a model file (ONNX, LiteRT, SavedModel) has an output of
    three axes, a detector's predictions (a classifier's are two, a segmenter's four)."""
    from explain_cli.model import files

    if files.is_runtime_model(str(path)):
        try:
            return any(len(shape) == 3 for _, shape in files.output_shapes(str(path)))
        except Exception:  # loading it says what is wrong
            return False
    if path.suffix.lower() != ".keras" or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False  # loading it says what is wrong
    if "ObjectDetector" in str(config.get("class_name", "")):
        return True
    outputs = (config.get("config") or {}).get("output_layers")
    return isinstance(outputs, (list, dict)) and len(outputs) == 2


def _taken(entry: type, options: dict[str, Any], what: str) -> dict[str, Any]:
    """`options`, all of them keyword arguments of `entry`; BadArgument naming the first that is not."""
    import inspect

    known = inspect.signature(entry).parameters
    unknown = [name for name in options if name not in known]
    if unknown:
        raise BadArgument(None, f"{unknown[0]} is not an option for {what} ({entry.__name__})")
    return options
