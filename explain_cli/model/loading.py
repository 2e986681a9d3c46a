"""Which model a run explains: the built-in keras.applications registry, weights, and users' files.

The registry is plain data so that the command line can list and check model names without
TensorFlow; everything that builds or loads a model imports it inside the function.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence, Union

from explain_cli.inputs import labels as labels_module
from explain_cli.errors import BadArgument, ExplainError, first_line, install
from explain_cli.model.sizes import converter_layer, grid_of
from explain_cli.inputs.held import HeldInput
from explain_cli.inputs.labels import Labels

# The named --preprocess modes: keras.applications' three, x / 255 ("unit") and none.
PREPROCESS_MODES = ("caffe", "tf", "torch", "unit", "none")
Preprocess = Union[str, Callable[[Any], Any]]




@dataclass(frozen=True)
class BuiltIn:
    """A keras.applications classifier: its constructor, input size, preprocessing and Grad-CAM layer."""

    constructor: str  # attribute of keras.applications
    module: str  # keras.applications submodule whose preprocess_input the model was trained with
    size: int
    layer: str | None  # None: the last 4-D layer (when Keras' own name for it is not stable)
    weights_file: str  # the name Keras caches the ImageNet weights under, in $KERAS_HOME/models


_TF_KERNELS = "_weights_tf_dim_ordering_tf_kernels"
BUILT_IN: dict[str, BuiltIn] = {
    "resnet50": BuiltIn("ResNet50", "resnet50", 224, "conv5_block3_out", f"resnet50{_TF_KERNELS}.h5"),
    "resnet101": BuiltIn("ResNet101", "resnet", 224, "conv5_block3_out", f"resnet101{_TF_KERNELS}.h5"),
    "resnet152": BuiltIn("ResNet152", "resnet", 224, "conv5_block3_out", f"resnet152{_TF_KERNELS}.h5"),
    "vgg16": BuiltIn("VGG16", "vgg16", 224, "block5_conv3", f"vgg16{_TF_KERNELS}.h5"),
    "vgg19": BuiltIn("VGG19", "vgg19", 224, "block5_conv4", f"vgg19{_TF_KERNELS}.h5"),
    "mobilenet_v2": BuiltIn("MobileNetV2", "mobilenet_v2", 224, "out_relu", f"mobilenet_v2{_TF_KERNELS}_1.0_224.h5"),
    "efficientnet_b0": BuiltIn("EfficientNetB0", "efficientnet", 224, "top_activation", "efficientnetb0.h5"),
    "densenet121": BuiltIn("DenseNet121", "densenet", 224, "relu", f"densenet121{_TF_KERNELS}.h5"),
    "inception_v3": BuiltIn("InceptionV3", "inception_v3", 299, "mixed10", f"inception_v3{_TF_KERNELS}.h5"),
    "xception": BuiltIn("Xception", "xception", 299, "block14_sepconv2_act", f"xception{_TF_KERNELS}.h5"),
    "convnext_tiny": BuiltIn("ConvNeXtTiny", "convnext", 224, None, "convnext_tiny.h5"),
}


@dataclass(frozen=True)
class LoadedModel:
    """A ready model and what a run needs to feed it and name its outputs."""

    name: str
    keras_model: Any
    height: int
    width: int
    channels: int
    preprocess: Callable[[Any], Any]  # float32 batch in [0, 255] -> the model's input
    default_layer: str | None
    labels: Labels
    precision: str = "fp32"  # "bf16": the graph explain replays computes in bfloat16 (model/precision.py)
    live: bool = False  # a model object in memory, which may be trained further: BatchNorm is not folded (model/folding.py)
    head: Any = None  # heads.Head: what its output is (None: it has several outputs and none was chosen)
    output: str | None = None  # the output explained, of a model with several
    identity: str | None = None  # the files it was made from, as they are now (model/runtime.py's cache key); None: memory
    pixels: str = "uint8"  # what its steps take: "uint8" pictures, preprocessed; "float32": the model's input as it is
    input_name: str | None = None  # a model of several inputs: the one explained
    held: tuple[HeldInput, ...] = ()  # and the others, held as each example gives them (inputs/held.py)
    depth: int | None = None  # a model of volumes or clips (batch, depth, height, width, channels): its slices or frames

    @property
    def grid(self) -> tuple[int, ...]:
        """The sides of its input between the batch and the channels: (height, width), or (depth, height, width)."""
        return (self.height, self.width) if self.depth is None else (self.depth, self.height, self.width)

    def as_input(self) -> LoadedModel:
        """The model fed its input as it stands: float32 batches, no preprocessing (an array a user already scaled)."""
        return dataclasses.replace(self, preprocess=_unchanged, pixels="float32")


def _unchanged(x: Any) -> Any:
    return x


def check_spec(spec: str) -> str | None:
    """Why `spec` names no model (for a usage error), or None when it is a built-in name or a file."""
    if spec.lower() in BUILT_IN or Path(spec).exists():
        return None
    close = difflib.get_close_matches(spec.lower(), BUILT_IN, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{spec!r} is neither a built-in model nor an existing file; {hint}built-in: {', '.join(BUILT_IN)}"


def load(
    spec: str,
    weights: str = "imagenet",
    labels_file: Path | str | Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
    imports: Sequence[str] = (),
    unsafe: bool = False,
    precision: str = "fp32",
    reading: Any = None,
    input_size: tuple[int, ...] | None = None,
    input_name: str | None = None,
    depth: int | None = None,
) -> LoadedModel:
    """Build a built-in model (ImageNet weights or a local weights file) or load a user's model file; `reading`
    (heads.Reading) says which output to explain and how to read it; `input_size`, the size to feed a model whose
    input's is free; `depth`, the frames of a model of clips that leaves its depth free (--clip-length).

    `imports` (module names or .py files) are imported first, so that the custom layers a model file
    names are defined; `unsafe` lets Keras run the Python code a file stores (Lambda layers).
    """
    from explain_cli.model.backend import load_tensorflow

    load_tensorflow()
    custom_objects = import_user_code(imports)
    if spec.lower() in BUILT_IN:
        name = spec.lower()
        entry = BUILT_IN[name]
        model = _build(name, entry, weights)
        prep = _own_preprocess(entry) if preprocess is None else preprocessing(preprocess)
        default = entry.layer
    else:
        name = Path(spec).name
        model = _load_file(Path(spec), custom_objects, unsafe)
        if weights != "imagenet":
            _load_weights(model, Path(weights), name)
        converter = _image_converter(model)
        prep = converter if preprocess is None and converter is not None else preprocessing(preprocess or "none")
        default = None
    loaded = _loaded(model, name, spec, prep, default, labels_file, precision, reading, input_size, input_name, depth)
    return dataclasses.replace(loaded, identity=identity(spec, weights, imports))


def identity(spec: str, weights: str, imports: Sequence[str] = ()) -> str:
    """What a loaded model is made from, as it is now: the built-in's name or the file's path, size and time of
    change, the same of a weights file, and the code imported first."""
    import keras

    def of(path: Path) -> str:
        found = path.resolve()
        status = found.stat()
        return f"{found} {status.st_size} {status.st_mtime_ns}"

    def code(imported: str) -> str:  # a module by name: its file, where it has one
        if imported.endswith(".py"):
            return of(Path(imported))
        try:
            found = importlib.util.find_spec(imported)
        except (ImportError, ValueError):
            found = None
        return of(Path(found.origin)) if found is not None and found.origin and Path(found.origin).is_file() \
            else imported

    model = spec.lower() if spec.lower() in BUILT_IN else of(Path(spec))
    weighted = f"imagenet, keras {keras.__version__}" if weights == "imagenet" else of(Path(weights))
    return repr((model, weighted, tuple(code(i) for i in imports)))


def from_object(model: Any, labels: Path | str | Sequence[str] | None = None, preprocess: Preprocess | None = None,
                precision: str = "fp32", reading: Any = None,
                input_size: tuple[int, ...] | None = None, input_name: str | None = None,
                depth: int | None = None) -> LoadedModel:
    """A keras.Model already in memory (a notebook's, a training script's), used as it is: explain replays its own
    layers, so what it computes follows the model's current weights."""
    from explain_cli.model.backend import load_tensorflow

    _, keras = load_tensorflow()
    if not isinstance(model, keras.Model):
        raise ExplainError(f"not a Keras model: a {type(model).__name__} (give a keras.Model, a built-in name or a "
                           "model file)")
    converter = _image_converter(model)
    prep = converter if preprocess is None and converter is not None else preprocessing(preprocess or "none")
    loaded = _loaded(model, model.name, model.name, prep, None, labels, precision, reading, input_size, input_name,
                     depth)
    return dataclasses.replace(loaded, live=True)


def _loaded(model: Any, name: str, spec: str, prep: Callable[[Any], Any], default: str | None,
            labels: Path | str | Sequence[str] | None, precision: str, reading: Any,
            input_size: tuple[int, ...] | None = None, input_name: str | None = None,
            depth: int | None = None) -> LoadedModel:
    from explain_cli.model import graph as graph_module
    from explain_cli.model import heads
    from explain_cli.model import cut as split

    reading = reading or heads.Reading()
    depth, height, width, channels = grid_of(model, spec, input_size, input_name, depth)
    graph = graph_module.flatten(model, reading.output, input_name)
    head, names = None, None
    if graph.output is not None:
        _, activation, _ = split.pre_activation(graph)
        head = heads.detect(split.output_shape(graph), activation, reading.multi_label, reading.output_index,
                            reading.threshold)
        if head.kind == "value":  # a value is named after its output (and element)
            output = next((n for n, number in graph.outputs if number == graph.output), None) or "value"
            names = (f"{output}[{head.index}]" if head.size > 1 else output,)
    elif reading.multi_label or reading.output_index is not None:
        graph.chosen_output()  # the usage error naming the outputs
    return LoadedModel(
        name=name,
        keras_model=model,
        height=height,
        width=width,
        channels=channels,
        depth=depth,
        preprocess=prep,
        default_layer=default,
        labels=labels_module.for_model(head.classes if head else 0, labels, names),
        precision=precision,
        head=head,
        output=reading.output,
        input_name=graph_module.input_names(model)[graph.input] if graph.held else input_name,
        held=graph_module.held_inputs(model, spec, graph),
    )


def _build(name: str, entry: BuiltIn, weights: str) -> Any:
    import keras

    constructor = getattr(keras.applications, entry.constructor)
    if weights != "imagenet":
        model = constructor(weights=None)
        _load_weights(model, Path(weights), name)
        return model
    cached = _cached(entry)
    if cached is not None:
        # The file was verified when Keras downloaded it; Keras would hash it again at every build
        # (0.2 s for ResNet50's 100 MB, over 1 s for VGG16's 528 MB), so load it directly. If it does
        # not load (a download cut short), Keras' own path below checks the hash and fetches it again.
        model = constructor(weights=None)
        try:
            _load_weights(model, cached, name)
            return model
        except ExplainError:
            pass
    try:
        return constructor(weights="imagenet")
    except Exception as error:  # Keras raises a bare Exception for a failed download
        raise ExplainError(_download_failure(name, error)) from None


def _cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _cached(entry: BuiltIn) -> Path | None:
    path = _cache_dir() / entry.weights_file
    return path if path.is_file() else None


def _download_failure(name: str, error: Exception) -> str:
    text = " ".join(str(error).split())
    url = re.search(r"https?://[^\s:]+(?::\d+)?[^\s:]*", text)
    cache = _cache_dir()
    where = f" from {url.group(0)}" if url else ""
    return (
        f"cannot download the ImageNet weights for {name}{where} (no network?) and none are cached in {cache}; "
        f"pass --weights PATH to use a local weights file (.h5 or .weights.h5)"
    )


def _load_weights(model: Any, path: Path, name: str) -> None:
    if not path.is_file():
        raise ExplainError(f"{path}: weights file not found")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(path))
        except Exception as error:  # h5py, Keras and ValueError all surface here
            raise ExplainError(f"{path}: cannot load these weights into {name}: {first_line(error)}") from None
    # Keras only warns when part of a file does not match, leaving those layers random: explanations
    # of a half-loaded model would look plausible and mean nothing, so that is an error here.
    skipped = [w for w in caught if "freshly-initialized" in str(w.message) or "Skipping" in str(w.message)]
    if skipped:
        raise ExplainError(
            f"{path}: these weights do not match {name}: {len(skipped)} parts were not found in the file"
        )


def _load_file(path: Path, custom_objects: dict[str, Any], unsafe: bool) -> Any:
    import keras

    if path.is_dir():
        raise ExplainError(f"{path}: is a directory, not a .keras or .h5 model file")
    if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise ExplainError(f"{path}: not a model file: expected a .keras or .h5 file")
    try:
        return keras.models.load_model(str(path), compile=False, custom_objects=custom_objects, safe_mode=not unsafe)
    except Exception as error:  # a corrupt zip, an h5 without a model, unknown custom layers...
        raise ExplainError(f"{path}: cannot load the model: {_load_failure(error)}") from None


# Packages whose model files load once they are installed (Keras imports them by the module the file names).
PACKAGE_EXTRAS = {"keras_hub": "hub"}


def _load_failure(error: Exception) -> str:
    """Keras' reason a model did not load, told as what to do about it here."""
    text = str(error)
    module = re.search(r"parent module (\S+) cannot be imported", text)
    if module and module.group(1).split(".")[0] in PACKAGE_EXTRAS:
        package = module.group(1).split(".")[0]
        return (f"it is a {package.replace('_', '-')} model, and {package.replace('_', '-')} is not installed: "
                f"{install(PACKAGE_EXTRAS[package])}")
    if module:
        return f"it uses classes from the module {module.group(1)}, which cannot be imported here: is it installed?"
    if "deserialization of a `Lambda` layer" in text:
        return ("it holds a Lambda layer, whose Python code is stored in the file and runs when it loads; "
                "if you trust the file, pass --unsafe-deserialization")
    missing = re.search(r"Could not locate (?:class|function) '([^']+)'|Unknown \w+: '([^']+)'", text)
    if missing:
        name = missing.group(1) or missing.group(2)  # .h5 files give the registered name, "package>Class"
        module = re.search(rf"'module': '([^']+)', 'class_name': '{re.escape(name)}'", text)
        registered = re.search(rf"'registered_name': '([^']+>{re.escape(name)})'", text)
        registered_name = registered.group(1) if registered else name if ">" in name else None
        known = f" (registered as '{registered_name}')" if registered_name else ""
        where = module.group(1) if module and module.group(1) != "__main__" else None
        fix = f"--import {where}" if where else "--import MODULE|FILE.py (the code that defines it)"
        return f"it uses the custom class or function '{name.split('>')[-1]}'{known}, which is not defined here: pass {fix}"
    return first_line(error)


def import_user_code(specs: Sequence[str]) -> dict[str, Any]:
    """Import each module name or .py file; return the classes and functions they define, by name.

    Registered classes (keras.saving.register_keras_serializable) are found by Keras once imported; the
    others are handed to it by their names.
    """
    objects: dict[str, Any] = {}
    for spec in specs:
        module = _import(spec)
        for name, value in vars(module).items():
            if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == module.__name__:
                objects[name] = value
    return objects


def _import(spec: str) -> ModuleType:
    try:
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            name = f"explain_user_{path.stem}"
            loader = importlib.util.spec_from_file_location(name, path)
            if loader is None or loader.loader is None:
                raise ImportError(f"not a Python file: {path}")
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            loader.loader.exec_module(module)
            return module
        if os.getcwd() not in sys.path:  # as `python -m` would: modules beside the user are found
            sys.path.append(os.getcwd())
        return importlib.import_module(spec)
    except Exception as error:  # the user's code may raise anything while it runs
        raise ExplainError(f"--import {spec}: {type(error).__name__}: {first_line(error)}") from None


def _own_preprocess(entry: BuiltIn) -> Callable[[Any], Any]:
    import keras

    return getattr(keras.applications, entry.module).preprocess_input


def _image_converter(model: Any) -> Callable[[Any], Any] | None:
    """A keras-hub task saved with its preprocessor: the image converter that scales its inputs (its resize is the
    identity here: images arrive at the model's size)."""
    converter = converter_layer(model)
    return (lambda x: converter(x)) if callable(converter) else None


def check_preprocess(preprocess: Preprocess | None) -> None:
    """BadArgument unless `preprocess` is None, a named mode or a function."""
    if preprocess is None or callable(preprocess) or preprocess in PREPROCESS_MODES:
        return
    raise BadArgument("--preprocess", f"preprocess is one of {', '.join(PREPROCESS_MODES)} or a function "
                      f"(pixels 0-255 -> the model's input), not {preprocess!r}")


def preprocessing(mode: Preprocess) -> Callable[[Any], Any]:
    """The scaling of a --preprocess mode (or the user's own function), for tensors or numpy arrays of pixels in
    0-255: caffe, tf and torch as keras.applications scales; unit: x / 255."""
    check_preprocess(mode)
    if callable(mode):
        return mode
    if mode == "none":
        return lambda x: x
    if mode == "unit":
        return lambda x: x / 255.0
    from keras.applications import imagenet_utils

    return lambda x: imagenet_utils.preprocess_input(x, mode=mode)
