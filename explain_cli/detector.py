"""The library's detector: a `Detector` made once from an object detector, then finding and explaining its boxes.

    from explain_cli import Detector
    detector = Detector("retinanet.keras")                     # or a keras.Model; min_score, iou, max_boxes
    for e in detector.explain(["street.jpg"]):                  # gradcam; method="drise" needs no layer
        e.overlay().save(f"{e.source}-det{e.rank}-{e.label}.png")   # e.box: (x0, y0, x1, y1) in the image's pixels

Each image's detections are the model's own predictions after non-maximum suppression (tasks/detection_outputs.py reads its
outputs). A detection is explained by a gradient method at a layer (its target: Σ IoU × class score over the
predictions that make it up), EigenCAM (class-agnostic), D-RISE (masks and forward passes alone) or random noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from explain_cli.engine import Engine
from explain_cli.model.files import is_runtime_model
from explain_cli.tasks.detections import DetectBatch, Found, detections, explanations, with_maps
from explain_cli.model.detectors import load_detector, with_labels
from explain_cli.tasks import boxes as box_module
from explain_cli.running import pipeline
from explain_cli.errors import BadArgument, ExplainError, Listener, Notes, blamed
from explain_cli.inputs.sources import Source
from explain_cli.inputs.shards import DEFAULT_MAX_PIXELS
from explain_cli.methods import DETECTION_METHODS
from explain_cli.methods.perturbation import PerturbationInputs, drise
from explain_cli.methods.registry import LAYERLESS
from explain_cli.settings import DetectorSettings, Method, Reading, Running, check_detector, grouped
from explain_cli.results import Detection, Detections, Explanation, Layer, frozen_array


class Detector(Engine):
    """Explains a Keras object detector's boxes.

    `model`: a keras.Model or a .keras file: keras-hub's RetinaNet or D-FINE detector, or a model whose outputs are boxes
    (b, A, 4) and class scores (b, A, C) before non-maximum suppression (`boxes_output` and `scores_output` name them
    when it has more; `box_format`: how its boxes read, boxes.FORMATS, default xyxy in the input's pixels;
    `objectness_output`: a YOLO's (b, A, 1), which multiplies the class probabilities). A
    detection is a prediction whose class probability is at least `min_score` and that survives suppression at `iou`
    (the model's own threshold for keras-hub's models), at most `max_boxes` per image. `method`: DETECTION_METHODS;
    `layer` where the gradient methods take their maps. D-RISE: `masks`, `cells`, `keep`, `seed`. `runtime` and
    `on_note`: as the Explainer's. Images as the Explainer reads them: a float array is the model's input as it stands.
    Arguments grouped as the Explainer's: `method=Method("drise", masks=500)`, `reading=Reading(min_score=0.5)`,
    `running=Running(precision="fp32")`.
    """

    _graph: Any  # the model's graph; None for a model file

    def __init__(self, model: Any, *, layer: str | None = None, method: str | Method | None = None, precision: str = "auto",
                 preprocess: Any = None, labels: str | Path | Sequence[str] | None = None,
                 imports: Sequence[str] = (), unsafe: bool = False, boxes_output: str | None = None,
                 scores_output: str | None = None, box_format: str | None = None,
                 objectness_output: str | None = None, min_score: float = 0.3,
                 iou: float | None = None, max_boxes: int = 20, masks: int = 1000, cells: int = 16, keep: float = 0.5,
                 seed: int = 0, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                 input_size: tuple[int, int] | None = None, runtime: str = "auto", precision_for: Sequence[str] = (),
                 layout: str | None = None, output_layout: str | None = None, resize: str | None = None,
                 on_note: Listener | None = None, reading: Reading | None = None,
                 running: Running | None = None) -> None:
        if isinstance(method, Method) or reading is not None or running is not None:
            Detector.__init__(self, model, **grouped(Detector, locals()))  # the plain arguments they group
            return
        self._arguments = {name: value for name, value in locals().items() if name != "self"}  # for a sibling
        from explain_cli.tasks import detection_steps
        from explain_cli.tasks import detection_outputs as detector
        from explain_cli.model import runtime as offload
        from explain_cli.model import cut as split
        from explain_cli.steps import compiled as core
        from explain_cli.inputs import labels as labels_module
        from explain_cli.evaluation import detections as detect_evaluate
        from explain_cli.steps import precision as precisions

        method = method if method is not None else default_method(model)
        if method not in DETECTION_METHODS:
            raise BadArgument("--method", f"{method!r} does not explain detections; choose from "
                              f"{', '.join(DETECTION_METHODS)}")
        check_detector(min_score, iou, keep, max_boxes, masks, cells, seed, batch_size, max_pixels, precision, preprocess,
               runtime)
        self.method, self.min_score, self.max_boxes, self.batch_size = method, min_score, max_boxes, batch_size
        # What a second Detector like this one is made with (--sanity's, on a copy of the model)
        self._options = dict(method=method, preprocess=preprocess, boxes_output=boxes_output,
                            scores_output=scores_output, box_format=box_format, objectness_output=objectness_output,
                            min_score=min_score, iou=iou, max_boxes=max_boxes, masks=masks, cells=cells, keep=keep,
                            seed=seed, batch_size=batch_size, max_pixels=max_pixels, input_size=input_size)
        self.max_pixels, self.seed, self._masks_setting = max_pixels, seed, (masks, cells, keep)
        for other in precision_for:
            detect_evaluate.check([other])
        chosen, why = precisions.resolve(precision, [method, *precision_for])
        self.notes = Notes(on_note)
        if resize is not None:
            from explain_cli.errors import choose
            from explain_cli.inputs.sources import RESIZES

            choose("--resize", "resize", resize, RESIZES)
        self.resize = resize or "stretch"
        if is_runtime_model(model):
            self.precision = "fp32"
            self._open_file(str(model), labels, preprocess, layer, box_format, iou, input_size, layout, output_layout)
            return
        self.precision = chosen
        self.notes.add(f"precision {chosen} ({why})")
        self._model = load_detector(model, labels, preprocess, imports, unsafe, chosen, input_size)
        self._graph = core.graph_of(self._model, offload.choose(runtime, self._model, self.notes.add))
        self.format = detector.read(self._model.keras_model, self._graph, self._model.height, self._model.width,
                                    boxes_output, scores_output, box_format, iou, objectness_output)
        self._model = with_labels(self._model, labels_module.for_model(self.format.classes, labels))
        try:
            self.default_layer: str | None = detection_steps.default_layer(self._graph, self.format)
        except ExplainError:
            if layer is not None or method not in LAYERLESS:
                raise
            self.default_layer = None  # D-RISE and the control need no layer
        self.layer: str | None = layer or self.default_layer
        if self.layer is not None:
            try:
                self.layer = split.check(detector.joined(self._graph, self.format), self.layer).name
            except ExplainError as error:
                raise BadArgument("--layer", f"{error}; default: {self.default_layer}") from None
        self.notes.add(f"{self.format.predictions} predictions of {self.format.classes} classes, boxes as "
                          f"{self.format.box_format}, suppression at IoU {self.format.iou:g}" +
                          ("" if self.format.per_class else " over all classes"))
        cut = None if method in LAYERLESS and layer is None else self.layer
        self._graph = offload.ending_at(self._graph, cut)
        self._cut = cut
        self._steps = detection_steps.build(self._model, self._graph, self.format, cut)
        self._rise_masks: Any = None
        self._input_view: Detector | None = None  # itself fed arrays that are the model's input as they stand

    def _open_file(self, path: str, labels: Any, preprocess: Any, layer: str | None, box_format: str | None,
                   iou: float | None, input_size: tuple[int, int] | None, layout: str | None,
                   output_layout: str | None) -> None:
        """An ONNX, LiteRT or SavedModel detector: run by its runtime, its outputs read in one of the layouts
        (tasks/detection_files.py), its boxes explained by forward passes alone."""
        from explain_cli.inputs import labels as labels_module
        from explain_cli.model import files
        from explain_cli.model.loading import preprocessing
        from explain_cli.tasks import detection_files, detection_outputs

        name = Path(path).name
        if layer is not None or self.method not in LAYERLESS:
            raise BadArgument("--layer" if layer is not None else "--method",
                              f"{name}: {layer or self.method} needs the model's layers; {FILES_EXPLAINED_BY}")
        opened = files.open_file(path, files.Runtime(input_size, layout))
        metadata = opened.runner.metadata
        if files.made_by_ultralytics(metadata):  # its YOLOs take x / 255 and name their classes
            if preprocess is None:
                preprocess = "unit"
                self.notes.add("preprocess unit (an Ultralytics export: pixels / 255)")
            if self._arguments["resize"] is None:
                self.resize = "letterbox"
                self.notes.add("resize letterbox (an Ultralytics export: trained on letterboxed pictures)")
            if labels is None and files.names_in(metadata):
                labels = files.names_in(metadata)
                self.notes.add("labels from the file's metadata")
        scaling = preprocessing(preprocess or "none")
        probe = opened.feed(np.full((1, opened.height, opened.width, opened.channels), 128.0, np.float32), scaling)
        found, how = detection_files.read(path, opened.runner.outputs, probe, output_layout, box_format,
                                          None if labels is None else _count(labels))
        for note in (*opened.notes, how):
            self.notes.add(note)
        self._model = detection_files.FileDetector(
            name, opened.height, opened.width, opened.channels, labels_module.for_model(found.classes, labels),
            lambda pixels: opened.feed(pixels, scaling), opened.feed, tuple(opened.notes))
        names = [output for output, _ in opened.runner.outputs]
        self.format = detection_outputs.Format(
            names[found.outputs[0]], names[found.outputs[-1]], found.box_format, "sigmoid", found.classes,
            found.predictions, iou if iou is not None else 1.0 if found.name == "detr" else 0.5)
        self._layout, self._graph, self._cut = found, None, None
        self.default_layer = self.layer = None
        self._fresh_steps()
        self._rise_masks = None
        self._input_view = None

    @classmethod
    def from_settings(cls, settings: DetectorSettings, on_note: Listener | None = None) -> Detector:
        fields = dataclasses.asdict(settings)
        return cls(fields.pop("model"), on_note=on_note, **fields)

    @property
    def drise_masks(self) -> tuple[int, int, float]:
        """D-RISE's masks: how many, of N × N cells, each cell kept with this probability."""
        return self._masks_setting

    def __repr__(self) -> str:
        return (f"Detector({self.name!r}, method={self.method!r}, layer={self.layer!r}, classes={self.format.classes}, "
                f"min_score={self.min_score}, iou={self.format.iou})")

    def predict(self, images: Any, errors: str = "raise") -> list[Detections]:
        """Each image's Detections: its boxes (the image's pixels), most confident first, no map computed."""
        def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> pipeline.ImageResult:
            found = batch.images[row]
            listed = detections(found, self.labels, original.shape[:2], self.canvas)
            return pipeline.ImageResult(source, values=[Detections(source.key, tuple(listed),
                                                                   frozen_array(found.probabilities))])

        return [r.values[0] for r in self._run(images, lambda made: made.compute(explain=False), finish, errors)]

    def detect(self, images: Any, errors: str = "raise") -> list[tuple[Any, list[Detection]]]:
        """Each image's detections as (its key, [Detection]): `predict`'s, as pairs."""
        return [(found.source, [d for d in found.predictions if isinstance(d, Detection)])
                for found in self.predict(images, errors)]

    def explain(self, images: Any, classes: Any = None, top_k: int | None = None, errors: str = "raise",
                pictures: Any = None) -> list[Explanation]:
        """Every detection of every image explained: an Explanation each, its `target` the box (its `box` and `rank`
        k). `classes`: only the detections of these classes (a number or a label, or a list); `top_k`: only each
        image's k most confident. `pictures`: what to draw the maps on, as the Explainer takes them."""
        return list(self.iter_explain(images, classes, top_k, errors, pictures))

    def iter_explain(self, images: Any, classes: Any = None, top_k: int | None = None, errors: str = "raise",
                     pictures: Any = None) -> Iterator[Explanation]:
        """explain(), one detection at a time as each image's are computed: memory stays flat."""
        from explain_cli.inputs import sources as inputs

        keep = self._keeping(classes, top_k)
        drawn = None if pictures is None else inputs.pictures_by_key(pictures)
        for result in self._run(images, lambda made: made.compute(keep=keep), self._values(True), errors):
            for value in result.values:
                yield value if drawn is None else replace(value, image=frozen_array(drawn(value.source)))

    def layers(self) -> list[Layer]:
        """The layer outputs a gradient method can explain a detection at, the default marked."""
        from explain_cli.tasks import detection_outputs as detector

        if self._graph is None:
            raise BadArgument("--model", f"{self.name}: {FILES_EXPLAINED_BY.replace('a model file has', 'it has')}")
        return [Layer(p.name, tuple(p.grid_shape), p.kind, p.is_tokens, p.name == self.default_layer, p.describe())
                for p in detector.joined(self._graph, self.format).explainable()]

    def _keeping(self, classes: Any, top_k: int | None) -> Callable[[Found], Found] | None:
        """A filter of an image's detections: those of `classes`, its `top_k` most confident; None: all."""
        from explain_cli.errors import whole
        from explain_cli.steps import targets

        if classes is None and top_k is None:
            return None
        if top_k is not None:
            whole("--top-k", "top_k", top_k, 1)
        given = [classes] if isinstance(classes, (int, str, np.integer)) else list(classes or ())
        wanted = np.array([targets.resolve_class(self.label_set, int(c) if isinstance(c, np.integer) else c)
                           for c in given], np.int64)

        def keep(found: Found) -> Found:
            chosen = np.isin(found.classes, wanted) if len(wanted) else np.ones(len(found.classes), bool)
            rows = np.flatnonzero(chosen)[:top_k]
            return Found(found.prediction[rows], found.classes[rows], found.scores[rows], found.boxes[rows],
                         found.probabilities[rows])

        return keep

    def evaluate(self, images: Any, methods: Sequence[str] = ("gradcam", "random"), *, steps: int = 32,
                 blur_sigma: float = 5.0, tolerance: float = 15.0, sanity: bool = False, sanity_stages: int = 6,
                 errors: str = "raise") -> Any:
        """Each method's maps of every detection measured as `explain evaluate` measures them (evaluation/detections.py):
        a record per (image, detection, method), and each method's means (results.Evaluation); with `sanity`,
        cascading randomisation (evaluation/detection_sanity.py), a record per (image, detection, method, stage)."""
        from explain_cli.evaluation import detections as detect_evaluate
        from explain_cli.evaluation import evaluate as evaluation
        from explain_cli.steps import precision as precisions
        from explain_cli.results import Evaluation

        detect_evaluate.check(methods)
        layered = [m for m in methods if m not in LAYERLESS]
        if self._graph is None and layered:
            raise BadArgument("--methods", f"{self.name}: {layered[0]} needs the model's layers; {FILES_EXPLAINED_BY}")
        wanted = (*self._arguments["precision_for"], *methods)
        if precisions.resuited(self._arguments["precision"], self.precision, [self.method, *wanted]) is not None:
            sibling = Detector(**{**self._arguments, "precision_for": wanted})  # at the precision they all suit
            return sibling.evaluate(images, methods, steps=steps, blur_sigma=blur_sigma, tolerance=tolerance,
                                    sanity=sanity, sanity_stages=sanity_stages, errors=errors)
        settings = evaluation.Settings(tuple(methods), steps, blur_sigma, tolerance, self.seed, self.batch_size)
        cascade = self.sanity(sanity_stages, frozenset(), None, self.notes.add) if sanity else None
        records: list[dict[str, Any]] = []
        sane: list[dict[str, Any]] = []
        for result in self._run(images, lambda made: detect_evaluate.evaluation_step(made, settings, cascade),
                                detect_evaluate.finish_step(self, settings, cascade), errors):
            records += result.records
            sane += result.side_records
        return Evaluation(tuple(records), tuple(evaluation.summarise(records, settings.methods)), tuple(sane))

    def sanity(self, stages: int, figures: frozenset[Source], out_dir: Path | None,
               say: Callable[[str], None]) -> Any:
        """--sanity's cascade of a randomised copy of the model, and a Detector like this one on it
        (evaluation/detection_sanity.py)."""
        from explain_cli.evaluation import detection_sanity

        if self._graph is None:
            raise BadArgument("--sanity", f"{self.name}: the sanity check randomises a Keras model's weights; a model "
                              "file's cannot be")

        def copy_on(keras_model: Any, layer: str | None) -> Detector:
            return Detector(keras_model, **{**self._options, "layer": layer, "labels": self.labels,
                                            "precision": self.precision, "runtime": "tensorflow"})

        return detection_sanity.prepare(self, self._model, self._steps.cuts is not None, copy_on, stages, self.seed,
                                        figures, out_dir, say)

    def look(self, images: np.ndarray) -> Any:
        """A batch's predictions before suppression (detection_steps.Looked): boxes, probabilities, features."""
        return self._steps.look(images)

    def judge(self, pixels: np.ndarray, boxes: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> Any:
        """Masked or perturbed images scored against detections (detection_steps: D-RISE's similarity, and the
        detections' own class probabilities)."""
        return self._steps.judge(pixels, boxes, probabilities, classes)

    def _values(self, explained: bool) -> pipeline.Finish:
        def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> pipeline.ImageResult:
            found = batch.images[row]
            values = explanations(self, source, original, found) if explained else \
                detections(found, self.labels, original.shape[:2], self.canvas)
            return pipeline.ImageResult(source, values=values)

        return finish

    def _batching(self) -> tuple[int, int, str]:
        return self.batch_size, self.max_pixels, "auto"

    def _fresh_steps(self) -> None:
        from explain_cli.tasks import detection_files, detection_steps

        if self._graph is None:  # a model file
            self._steps = detection_files.steps(self._model, self._layout)
        else:
            self._steps = detection_steps.build(self._model, self._graph, self.format, self._cut)

    def compute(self, explain: bool = True, method: str | None = None,
                keep: Callable[[Found], Found] | None = None) -> Callable[[np.ndarray, list[Source]], DetectBatch]:
        """uint8 batch -> DetectBatch: each image's detections (those `keep` keeps) and, with `explain`, each one's
        map by `method` (default: the Detector's)."""
        chosen = method or self.method

        def compute(batch: np.ndarray, sources: list[Source]) -> DetectBatch:
            looked = self._steps.look(batch)
            found = [self.suppress(looked.boxes[i], looked.probabilities[i]) for i in range(len(batch))]
            if keep is not None:
                found = [keep(f) for f in found]
            return DetectBatch(self.maps(chosen, batch, sources, looked, found) if explain else found)

        return blamed(compute, self._steps.look)

    def maps(self, method: str, batch: np.ndarray, sources: list[Source], looked: Any,
             found: list[Found]) -> list[Found]:
        """A batch's detections, each with its map by `method` and its target."""
        if method == "drise":
            return [self._drise(image, f) for image, f in zip(batch, found)]
        if method == "random":
            return [with_maps(f, np.full(len(f.classes), np.nan), self._random(source, f, *batch.shape[1:3]))
                    for source, f in zip(sources, found)]
        return self._gradient(method, looked, found)

    def suppress(self, found_boxes: np.ndarray, probabilities: np.ndarray) -> Found:
        """One image's detections from its predictions (A, 4) and (A, C): each prediction's most probable class and
        that probability as its score, then non-maximum suppression."""
        classes = np.argmax(probabilities, axis=1)
        scores = probabilities[np.arange(len(classes)), classes]
        kept = box_module.nms(found_boxes, scores, classes, self.format.iou, self.min_score, self.max_boxes,
                              self.format.per_class)
        return Found(kept, classes[kept], scores[kept], found_boxes[kept], probabilities[kept])

    def weights(self, found_boxes: np.ndarray, found: Found) -> np.ndarray:
        """(k, A): each detection's weight on every prediction: their boxes' IoU where it is at least 0.5."""
        return np.stack([box_module.match_weights(found_boxes, box) for box in found.boxes]) if len(found.boxes) \
            else np.zeros((0, len(found_boxes)), np.float32)

    def _gradient(self, method: str, looked: Any, found: list[Found]) -> list[Found]:
        """Every detection of a batch explained by a method at the layer, `batch_size` rows per backward pass."""
        explain = self._steps.explain(method)
        images = np.concatenate([np.full(len(f.classes), i) for i, f in enumerate(found)]).astype(np.int32)
        classes = np.concatenate([f.classes for f in found]).astype(np.int32)
        weights = np.concatenate([self.weights(looked.boxes[i], f) for i, f in enumerate(found)])
        targets, maps = [], []
        for start in range(0, len(images), self.batch_size):
            part = slice(start, start + self.batch_size)
            target, made = explain(looked, images[part], classes[part], weights[part])
            targets.append(target)
            maps.append(made)
        if not targets:
            return [with_maps(f, np.zeros(0), np.zeros((0, 1, 1), np.float32)) for f in found]
        target_all, maps_all = np.concatenate(targets), np.concatenate(maps)
        ends = np.cumsum([len(f.classes) for f in found])
        return [with_maps(f, target_all[end - len(f.classes):end], maps_all[end - len(f.classes):end])
                for f, end in zip(found, ends)]

    def masks(self) -> Any:
        """D-RISE's masks, drawn once for the run from its seed."""
        from explain_cli.methods.perturbation import rise_masks

        if self._rise_masks is None:
            count, cells, keep = self._masks_setting
            self._rise_masks = rise_masks(count, cells, keep, self.seed, *self.input_size[:2])
        return self._rise_masks

    def _drise(self, image: np.ndarray, found: Found) -> Found:
        """D-RISE (methods/perturbation.drise), s_t the best similarity (detector.similarity) of a masked image's
        predictions to detection t: every detection of the image from the same passes."""
        if not len(found.classes):
            return with_maps(found, np.zeros(0), np.zeros((0, *self.input_size[:2]), np.float32))

        def forward(pixels: np.ndarray) -> np.ndarray:
            similarity: np.ndarray = self.judge(pixels, found.boxes, found.probabilities, found.classes)[0]
            return similarity

        maps = drise(PerturbationInputs(forward, image.astype(np.float32), np.arange(len(found.classes)),
                                       self.batch_size, self.masks(), fill=self._fill))
        return with_maps(found, np.full(len(found.classes), np.nan), maps)

    def _random(self, source: Source, found: Found, height: int, width: int) -> np.ndarray:
        from explain_cli.methods.control import random_map

        return np.stack([random_map(self.seed, f"{source.shown}#{k}", int(c), height, width)
                         for k, c in enumerate(found.classes)]) if len(found.classes) else \
            np.zeros((0, height, width), np.float32)


FILES_EXPLAINED_BY = "a model file has none, so only drise explains its boxes (and random, to evaluate against)"


def default_method(model: Any) -> str:
    """The method a detector is explained by when none is named: gradcam at a layer, or drise for a model file."""
    return "drise" if is_runtime_model(model) else "gradcam"


def _count(labels: Any) -> int:
    """How many labels the user gave (a file's lines, or the names)."""
    from explain_cli.inputs import labels as labels_module

    return len(labels_module.from_file(Path(labels)) if isinstance(labels, (str, Path)) else tuple(labels))


