"""The library: an `Explainer` made once from a model, then explaining, predicting and evaluating images.

    from explain_cli import Explainer
    explainer = Explainer("resnet50")                       # or a keras.Model in memory, or a .keras / .h5 file
    for e in explainer.explain(["cat.jpg", photo_array], top_k=2):
        e.overlay().save(f"{e.source}-{e.label}.png")       # e.map, e.heatmap(), e.figure(); a notebook shows e

Images stream through the same pipeline as the command line's (decode, batch, compiled step), in batches, so a
folder or a generator of any length is never loaded whole; each compiled step is traced once and reused by every
later call. The command line is written on this class (cli/runs.py); nothing here prints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

from explain_cli.engine import Engine, default_method as default_method, key_of as _key
from explain_cli.tasks.inspect import Inspecting
from explain_cli.tasks.segment import Segmenting
from explain_cli.tasks.similar import Likening, References
from explain_cli.evaluation.measuring import Measuring
from explain_cli.evaluation import evaluate as evaluation
from explain_cli.inputs import grids, sources as inputs
from explain_cli.io import files as output
from explain_cli.running import pipeline
from explain_cli.model import files as runtimes
from explain_cli.steps import targets
from explain_cli.errors import BadArgument, ExplainError, Listener, Notes, blamed
from explain_cli.inputs.sources import Source
from explain_cli.methods import PERTURBATION_METHODS, PIXEL_METHODS
from explain_cli.results import Explanation, ImagePredictions, frozen_array
from explain_cli.settings import RANDOM, Method, Reading, Running, Settings, check, check_methods, grouped
from explain_cli.inputs.shards import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from explain_cli.model.loading import LoadedModel

Images = Any  # a numpy batch, an array, a PIL image, a path, a folder, or an iterable of these
Classes = "int | str | Sequence[int | str] | Mapping[Hashable, int | str] | None"


class Explainer(Likening, Segmenting, Measuring, Inspecting, Engine):
    """Explains a Keras image classifier's decisions, image by image.

    `model`: a keras.Model in memory (used as it is, so its current weights are what is explained), a built-in name
    ("resnet50", "vgg16", ...) or a .keras / .h5 file. `layer`: where class-activation methods take their maps
    (default: the model's last convolutional block, or for a transformer the input of its last block). `method`:
    any class-activation method (gradcam, gradcam++, xgradcam, hirescam, layercam, cam, eigencam, scorecam,
    attention-rollout), any pixel method (vanilla, smoothgrad, integrated-gradients, guided-backprop,
    guided-gradcam), a perturbation method (rise, occlusion) or random (default: gradcam; rise for a model file, which
    has no layers). `precision`: "auto", "fp32" or "bf16".
    `preprocess`: "caffe", "tf", "torch" or "none" (default: a built-in model's own; for a model object or file, its
    keras-hub image converter, else none). `labels`: a labels file or a list of class names. The method's own
    settings: `score` ("logit" or "probability"), `counterfactual`, `max_masks` (scorecam), `samples` and `noise`
    (smoothgrad), `steps` (integrated gradients), `masks`, `cells` and `keep` (rise), `window` and `stride`
    (occlusion), `seed`. `precision_for`: other methods "auto" must suit (it keeps fp32 for those that
    do not hold up in bf16). `runtime`: where forward-only passes run (the feature pass before the layer,
    predictions, perturbed images): "auto" (OpenVINO where installed), "tensorflow", "openvino" or "onnxruntime"; the
    gradient always runs in TensorFlow. `on_note`: hears each of `notes` as it comes, and whether it is a warning
    (default: warnings are Python warnings). Errors are ExplainError (BadArgument for an argument that cannot be used).

    The arguments come grouped too, the plain ones being the shorthand: `method=Method("rise", masks=2000)` (a method
    with its own settings), `reading=Reading(multi_label=True, threshold=0.3)` (how outputs are read) and
    `running=Running(precision="fp32", batch_size=8)` (where it runs).

    Images: a float array is the model's input as it stands, exactly as `model.predict` takes it (no resizing, no
    preprocessing); a uint8 array, a PIL image or a file is a picture, resized and preprocessed. `arrays="input"` reads
    every array as the model's input, `arrays="pixels"` every array as a picture (floats as 0-255). An input given as
    it stands is perturbed there (RISE, occlusion, evaluate): what is hidden goes to 0 of the model's input.
    """

    def __init__(self, model: Any, *, layer: str | None = None, method: str | Method | None = None,
                 precision: str = "auto",
                 preprocess: str | None = None, labels: str | Path | Sequence[str] | None = None,
                 weights: str = "imagenet", imports: Sequence[str] = (), unsafe: bool = False, score: str = "logit",
                 counterfactual: bool = False, max_masks: int = 64, samples: int = 25, noise: float = 0.15,
                 steps: int = 64, seed: int = 0, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                 precision_for: Sequence[str] = (), output: str | None = None, multi_label: bool = False,
                 output_index: int | None = None, threshold: float = 0.5, min_area: float = 0.01, masks: int = 4000,
                 cells: int = 7, keep: float = 0.5, window: int | None = None, stride: int | None = None,
                 input_size: tuple[int, ...] | None = None, layout: str | None = None,
                 outputs_are: str | None = None, runtime: str = "auto", arrays: str = "auto", resize: str = "stretch",
                 on_note: Listener | None = None, reading: Reading | None = None,
                 running: Running | None = None, input_name: str | None = None,
                 display_channels: Sequence[int] | None = None, clip_length: int | None = None,
                 clip_stride: int | None = None, calibration: str | Sequence[str] | None = None) -> None:
        if isinstance(method, Method) or reading is not None or running is not None:
            Explainer.__init__(self, model, **grouped(Explainer, locals()))  # the plain arguments they group
            return
        from explain_cli.steps import compiled as core
        from explain_cli.model import heads
        from explain_cli.model import loading as models
        from explain_cli.model import runtime as offload, quantizing
        from explain_cli.model import cut as split
        from explain_cli.steps import precision as precisions

        method = method if method is not None else default_method(model)
        given = isinstance(model, (str, Path))
        self._given = model  # what it was made from: a sibling at another precision is made from it too
        if isinstance(labels, Path):
            labels = str(labels)
        self.settings = Settings(
            model=str(model) if given else "", layer=layer, method=method, precision=precision, preprocess=preprocess,
            labels=labels if labels is None or isinstance(labels, str) else tuple(labels), weights=weights,
            imports=tuple(imports), unsafe=unsafe, score=score, counterfactual=counterfactual, max_masks=max_masks,
            samples=samples, noise=noise, steps=steps, seed=seed, batch_size=batch_size, max_pixels=max_pixels,
            precision_for=tuple(precision_for), output=output, multi_label=multi_label, output_index=output_index,
            threshold=threshold, min_area=min_area, masks=masks, cells=cells, keep=keep, window=window, stride=stride,
            input_size=input_size, layout=layout, outputs_are=outputs_are, runtime=runtime, arrays=arrays, resize=resize,
            input_name=input_name, display_channels=None if display_channels is None else tuple(display_channels),
            clip_length=clip_length, clip_stride=clip_stride,
            calibration=calibration if calibration is None or isinstance(calibration, str) else tuple(calibration))
        check(self.settings)
        self.resize, self.display_channels = resize, self.settings.display_channels
        self.cutting = grids.Cutting(clip_length, clip_stride)
        self.notes = Notes(on_note)  # how it was made and runs, for the curious (--verbose)
        self._steps: dict[tuple[object, ...], Any] = {}
        self._input_view: Explainer | None = None  # itself fed arrays that are the model's input as they stand
        self._model: LoadedModel | runtimes.RuntimeModel  # the second: a file only a runtime runs
        self._graph: Any  # graph.Graph; None for a runtime's file
        if given and runtimes.is_runtime_model(str(model)):
            self._open_runtime(str(model))
            return
        chosen, why = precisions.resolve(precision, [method, *precision_for])
        self.notes.add(f"precision {chosen} ({why})")
        read_as = heads.Reading(output, multi_label, output_index, threshold)
        if given:
            problem = models.check_spec(str(model))
            if problem:
                raise BadArgument("--model", problem)
            self._model = models.load(str(model), weights, labels, preprocess, imports=imports, unsafe=unsafe,
                                      precision=chosen, reading=read_as, input_size=input_size, input_name=input_name,
                                      depth=clip_length)
        else:
            self._model = models.from_object(model, labels, preprocess, chosen, read_as, input_size, input_name,
                                             clip_length)
        calibrating = quantizing.calibration_of(self._model, self.settings)
        self._graph = core.graph_of(self._model, offload.choose(runtime, self._model, self.notes.add, calibrating))
        for note in self._graph.notes:
            self.notes.add(note)
        try:
            self.default_layer: str | None = core.default_layer(self._graph, self._model)
        except ExplainError as error:  # no feature map at all: predict and classviz still work; explaining does not
            if layer is not None:
                raise
            self.default_layer, self._no_layer = None, error
        self.layer: str | None = layer or self.default_layer
        if self.layer is not None and self._graph.output is not None:  # several outputs: checked once one is chosen
            try:
                self.layer = split.check(self._graph, self.layer).name
            except BadArgument:
                raise
            except ExplainError as error:
                raise BadArgument("--layer", f"{error}; default: {self.default_layer}") from None
        self._graph = offload.ending_at(self._graph, self.layer)

    def _open_runtime(self, path: str) -> None:
        """A SavedModel, LiteRT or ONNX file: run by its runtime, explained by forward passes alone."""
        from explain_cli.model import loading as models

        s = self.settings
        if s.layer is not None:
            raise BadArgument("--layer", f"{path}: {runtimes.NOT_FOR_THEM}")
        if s.precision == "int8":
            raise BadArgument("--precision", f"{path}: int8 quantises a Keras model's passes; this file runs as it is")
        self._model = opened = runtimes.load(path, s.labels, models.preprocessing(s.preprocess or "none"),
                                             runtimes.Runtime(s.input_size, s.layout, s.outputs_are, s.threshold,
                                                              s.input_name))
        for note in opened.notes:
            self.notes.add(note)
        self._graph = None
        self.default_layer = self.layer = None
        self._no_layer = BadArgument("--model", f"{path}: {runtimes.NOT_FOR_THEM}")

    @classmethod
    def from_settings(cls, settings: Settings, on_note: Listener | None = None) -> Explainer:
        fields = dataclasses.asdict(settings)
        return cls(fields.pop("model"), on_note=on_note, **fields)

    # --- what it is ---------------------------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The keras.Model explained."""
        return self._model.keras_model

    @property
    def method(self) -> str:
        return str(self.settings.method)

    @property
    def precision(self) -> str:
        """The precision it computes in: "fp32" or "bf16" (what "auto" chose), or "int8" (asked for)."""
        return str(self._model.precision)

    @property
    def head(self) -> Any:
        """What the model outputs (heads.Head): its kind (classes, labels, binary, value, pixels) and size."""
        return self._model.head

    @property
    def outputs(self) -> list[str]:
        """The model's outputs, by name (one, for most models; none named for a runtime's model file)."""
        return [name for name, _ in self._graph.outputs] if self._graph is not None else []

    @property
    def _loaded(self) -> LoadedModel:
        """The Keras model's LoadedModel; BadArgument for a runtime's file."""
        if isinstance(self._model, runtimes.RuntimeModel):
            raise self._no_layer
        return self._model

    def _layered(self) -> Any:
        """The model's graph; BadArgument for a runtime's model file, which has none."""
        if self._graph is None:
            raise self._no_layer
        return self._graph

    @property
    def listing(self) -> output.Listing:
        """How an image's predictions are listed, by the kind of the model's head."""
        return output.Listing(self._needs_head().kind, self.settings.threshold)

    def _needs_head(self) -> Any:
        if self._model.head is None:
            self._graph.chosen_output()  # BadArgument naming the outputs to choose from
        return self._model.head

    def check_method(self, method: str) -> None:
        """BadArgument for a method this model cannot be explained by: one that needs layers, of a runtime's file."""
        if self._graph is None and method not in evaluation.LAYERLESS:
            raise BadArgument("--method", f"{self.name}: {method} needs the model's layers; {runtimes.NOT_FOR_THEM}")

    def __repr__(self) -> str:
        return f"Explainer({self.name!r}, method={self.method!r}, layer={self.layer!r}, precision={self.precision!r})"

    # --- explaining ---------------------------------------------------------------------------------------------

    def explain(self, images: Images, classes: Any = None, top_k: int | None = None, errors: str = "raise",
                region: Any = None, pictures: Images | None = None, similar_to: Any = None) -> list[Explanation]:
        """An Explanation per image and explained class, in input order. `classes`: None (each image's top `top_k`,
        by default 1; for several labels per image, every label at the threshold, up to `top_k`),
        a class (number, label or WordNet id) or a list of them for every image, or a mapping from each image's key
        (its path as given, or its index among the images given in memory) to its own class (its truth, say).
        `errors`: "raise" (BadInput for an image that cannot be read) or "skip" it. A segmentation explains each
        class over where it is predicted, or over `region`: a box (x0, y0, x1, y1) in the image's pixels, or a mapping
        from each image's key to its mask. `pictures`: what to draw the maps on, one per image in the order given (for
        arrays given as the model's input, drawn by default from the array itself, its range stretched).
        `similar_to`: explain the likeness of the model's output (an embedding) to reference vectors instead of a class:
        a vector (D,) or vectors (k, D) for every image, or a mapping from each image's key to its own (tasks/similar.py;
        `similar(a, b)` for two images)."""
        return list(self.iter_explain(images, classes, top_k, errors, region, pictures, similar_to))

    def iter_explain(self, images: Images, classes: Any = None, top_k: int | None = None, errors: str = "raise",
                     region: Any = None, pictures: Images | None = None,
                     similar_to: Any = None) -> Iterator[Explanation]:
        """explain() one image at a time, as they are computed: memory stays flat however many images there are."""
        if similar_to is not None:
            if classes is not None or top_k is not None or region is not None:
                raise BadArgument("similar_to", "a likeness is explained instead of classes: give no classes, top_k "
                                  "or region with it")
            yield from self._iter_likeness(images, similar_to, errors)
            return
        choice = self.choose(classes, top_k)
        finish = pipeline.values_only(self.labels, self.layer_for(self.method), self.method, choice.floor,
                                      self._needs_head().kind, self.canvas, self.explained_input)
        regions = self._regions(region)
        drawn = None if pictures is None else inputs.pictures_by_key(pictures)
        for result in self._run(images, lambda made: made.compute(choice, regions=regions), finish, errors):
            for value in result.values:
                yield value if drawn is None else dataclasses.replace(value, image=frozen_array(drawn(value.source)))

    def _regions(self, region: Any) -> Callable[[list[Source]], tuple[np.ndarray, list[str]]] | None:
        """A segmentation's region (segment.given_region); None: where each class is predicted."""
        from explain_cli.tasks import segment

        height, width, _ = self.input_size
        return None if region is None else segment.given_region(region, self._needs_head().kind, height, width, _key,
                                                                 self.canvas)

    def predict(self, images: Images, top: int = 5, errors: str = "raise",
                truth: Mapping[Hashable, Any] | str | Path | None = None) -> list[ImagePredictions]:
        """Each image's prediction: its `top` most probable classes and all its probabilities; for a segmentation, a
        Segmentation: the classes on at least `min_area` of it (up to `top`, most pixels first), each pixel's class,
        and with `truth` (a folder of masks, each image's at its relative path as .png, or a mapping from each image's
        key to its mask: class numbers per pixel) each class's overlap with it, for IoU (results.ious)."""
        if self._needs_head().kind == "pixels":
            return self._segment(images, top, errors, truth)
        if truth is not None:
            raise BadArgument("--truth-masks", f"{self.name} outputs {self.head.kind}, not classes per pixel: true masks "
                              "are a segmentation's")
        names, listing = self.labels, self.listing

        def finish(source: Source, original: np.ndarray, row: int, probabilities: Any) -> pipeline.ImageResult:
            p = np.asarray(probabilities[row])
            value = ImagePredictions(source.key, tuple(listing.predictions(p, names, top)), p)
            return pipeline.ImageResult(source, values=[value])

        return [r.values[0] for r in self._run(images, lambda made: made.prediction_step(), finish, errors)]

    def prediction_step(self) -> pipeline.Compute:
        """A pipeline compute step: a uint8 batch -> (b, classes) probabilities (a value; a segmentation's shares)."""
        step = self._predict()
        return lambda batch, sources: step(batch)

    def choose(self, classes: Any = None, top_k: int | None = None, evaluating: bool = False) -> targets.ClassChoice:
        """What `classes` and `top_k` ask to explain, checked against the model's labels: by default each image's
        top class, or for several labels per image every label at `threshold` (a segmentation: every class on
        `min_area` of the image), up to `top_k`; evaluating a segmentation, its `top_k` largest classes (default 1:
        each measured class costs 2N − 1 forward passes)."""
        kind = self._needs_head().kind
        if evaluating and kind == "pixels":
            return targets.choose(self._model.labels, classes, top_k or (None if classes is not None else 1), key=_key)
        floor = {"labels": self.settings.threshold, "pixels": self.settings.min_area}.get(kind)
        return targets.choose(self._model.labels, classes, top_k, key=_key, kind=kind, floor=floor)

    def compute(self, choice: targets.ClassChoice | None, method: str | None = None,
                regions: Callable[[list[Source]], tuple[np.ndarray, list[str]]] | None = None,
                references: References | None = None) -> pipeline.Compute:
        """A pipeline compute step: a uint8 batch and its sources -> the method's BatchResult for the chosen classes;
        with `regions` (a segmentation), each image's region over which its classes' scores are summed; with
        `references` (choice None), each image's likeness to its reference vectors instead. Compiled once per method
        and kind of choice, and reused by every later call."""
        method = method or self.method
        choice = choice or targets.ClassChoice()
        if method == RANDOM:
            if references is not None:
                raise BadArgument("--method", "random is a control for classes: a likeness is explained by a method")
            return self._random(choice)
        letterboxed = self.canvas.resize == "letterbox" and self._needs_head().kind == "pixels" and references is None
        step = self._compiled(method, choice, regions is not None, letterboxed, references.count if references else 0)

        def compute(batch: np.ndarray, sources: list[Source]) -> Any:
            given: dict[str, np.ndarray] = {}  # only what the step was compiled to take
            if choice.per_image is not None:
                given["classes"] = np.array([targets.own_class(choice, s.key) for s in sources], np.int32)
            if regions is not None:
                given["regions"] = regions(sources)[0]
            if letterboxed:  # a segmentation is read on the pictures alone, not on the letterbox's grey
                given["inside"] = self._inside(sources)
            if references is not None:
                given["references"] = references.of(sources)
            return step(batch, **given)

        return blamed(compute, self._predict())

    def _suiting(self, methods: Sequence[str], also: Sequence[str] = ()) -> Explainer:
        """This explainer, or where "auto" chooses another precision once `methods` (and `also`: classviz) are suited
        too (one of them keeps fp32), a sibling made from the same model and settings at that precision: the command
        line's rule."""
        from explain_cli.steps import precision as precisions

        check_methods(methods)
        wanted = (*self.settings.precision_for, *methods, *also)
        if isinstance(self._model, runtimes.RuntimeModel) or \
                precisions.resuited(self.settings.precision, self.precision, [self.method, *wanted]) is None:
            return self
        fields = dataclasses.asdict(dataclasses.replace(self.settings, precision_for=tuple(dict.fromkeys(wanted))))
        fields.pop("model")
        return Explainer(self._given, on_note=self.notes.listener, **fields)

    # --- inside -------------------------------------------------------------------------------------------------

    def _batching(self) -> tuple[int, int, str]:
        return self.settings.batch_size, self.settings.max_pixels, self.settings.arrays

    def _fresh_steps(self) -> None:
        self._steps = {}

    def _step(self, key: tuple[object, ...], make: Callable[[], Any]) -> Any:
        if key not in self._steps:
            self._steps[key] = make()
        return self._steps[key]

    def _cut(self) -> Any:
        from explain_cli.model import cut as split

        layer = self.layer
        if layer is None:
            raise self._no_layer
        return self._step(("cut", self.precision), lambda: split.split(self._graph, layer))

    def _predict_step(self) -> Any:
        from explain_cli.steps import compiled as core

        return core.compile_predict(self._loaded, self._graph)

    def _predict(self) -> Callable[[np.ndarray], np.ndarray]:
        """uint8 batch -> (b, classes) probabilities, compiled once."""
        if isinstance(self._model, runtimes.RuntimeModel):
            return self._model.forward
        return self._step(("predict", self.precision), self._predict_step)  # type: ignore[no-any-return]

    def _forward(self) -> Callable[[np.ndarray], np.ndarray]:
        """float32 pixels (perturbed images) -> (n, classes) probabilities: the one forward step of every method and
        metric that perturbs images, compiled once."""
        from explain_cli.steps import compiled as core

        if isinstance(self._model, runtimes.RuntimeModel):
            return self._model.forward
        return self._step(("forward", self.precision),  # type: ignore[no-any-return]
                          lambda: core.compile_predict(self._loaded, self._graph, "float32"))

    def _compiled(self, method: str, choice: targets.ClassChoice, regions: bool = False, inside: bool = False,
                  references: int = 0) -> Any:
        """The compiled step of a method for a kind of choice: made once, reused."""
        return self._step((method, self.precision, choice.key, regions, inside, references),
                          lambda: self._compile(method, choice, regions, inside, references))

    def _compile(self, method: str, choice: targets.ClassChoice, regions: bool = False, inside: bool = False,
                 references: int = 0) -> Any:
        from explain_cli.steps import compiled as core

        s = self.settings
        per_image = choice.per_image is not None
        if method in PERTURBATION_METHODS and references:
            return self._likeness_perturbation(method)
        if method in PERTURBATION_METHODS:
            if self._needs_head().kind == "pixels":
                return self._segment_perturbation(method, choice)
            if regions:
                raise BadArgument("--region", f"a region is a segmentation's: {self.name} outputs no classes per pixel")
            return self._perturbation(method, choice, self._predict(), self._forward())
        self.check_method(method)
        if method in PIXEL_METHODS:
            layer = self.layer if method != "guided-gradcam" else self._cut().layer
            return core.compile_saliency(self._loaded, self._graph, method, layer=layer, classes=choice.classes,
                                         top_k=choice.k, samples=s.samples, noise=s.noise, steps=s.steps, seed=s.seed,
                                         per_image=per_image, regions=regions, inside=inside, references=references)
        return core.compile_explain(self._loaded, self._cut(), method, classes=choice.classes, top_k=choice.k,
                                    score=s.score, counterfactual=s.counterfactual, max_masks=s.max_masks,
                                    per_image=per_image, regions=regions, inside=inside, references=references)

    def _perturbation(self, method: str, choice: targets.ClassChoice, predict: Callable[[np.ndarray], np.ndarray],
                      forward: Callable[[np.ndarray], np.ndarray]) -> Any:
        """A perturbation method's step over these forward functions, with the run's one set of RISE masks."""
        from explain_cli.steps import perturbing

        masks = self._step(("rise masks",), lambda: perturbing.masks_for(self.settings, *self.input_shape[:-1]))
        return perturbing.step(method, predict, forward, choice, self.settings, masks, self._fill)

    def _random(self, choice: targets.ClassChoice) -> pipeline.Compute:
        """The random control: seeded uniform noise at the input's resolution, for the chosen classes."""
        from explain_cli.steps import perturbing

        return perturbing.random_step(self._predict(), choice, self.settings.seed)
