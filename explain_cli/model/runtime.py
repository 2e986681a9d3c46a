"""Forward-only passes on a faster runtime: the feature pass before the cut, and whole forward passes.

The gradient starts at the cut (model/cut.py), so everything before it is a forward pass that any runtime can compute;
so are predictions and every perturbed batch (evaluate, Score-CAM's masks). Such a pass is traced once as a
TensorFlow function of the model's input, converted to OpenVINO or ONNX Runtime, cached on disk (keyed by the model
file's identity and the part of the graph converted), and called from inside the compiled steps: the head and its
gradient stay in TensorFlow, and nothing else changes. Where conversion fails the pass stays in TensorFlow, and the
run says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from explain_cli import errors
from explain_cli.errors import BadArgument, ExplainError, first_line
from explain_cli.io import files
from explain_cli.model import backend, quantizing

RUNTIMES = ("auto", "tensorflow", "openvino", "onnxruntime")
EXTRAS = {"openvino": "openvino", "onnxruntime": "onnx"}
MODULES = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime", "tf2onnx")}  # what each needs, its own first
_FORMAT = 2  # bump when what is stored in the cache changes

Say = Callable[[str, bool], None]  # a note, and whether the user asked for this runtime (then it is always said)


@dataclass(frozen=True)
class Offload:
    """Where a model's forward-only passes run: `runtime` ("openvino" or "onnxruntime") at `precision` ("fp32",
    "bf16", the runtime's inference precision, or "int8": quantised, model/quantizing.py), for inputs of `shape`
    (h, w, c). `identity` names the model's files for the disk cache (None: convert, do not store)."""

    runtime: str
    precision: str
    shape: tuple[int, int, int]
    identity: str | None
    explicit: bool = False
    say: Say = field(default=lambda line, loud: None, compare=False, repr=False)
    layer: str | None = None  # where a whole forward pass's runtime part ends: the explained layer (split.logits)
    token: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)  # tells apart models with no identity
    said: set[str] = field(default_factory=set, compare=False, repr=False)  # the passes already said to the user
    calibration: Callable[[], np.ndarray | None] | None = field(default=None, compare=False, repr=False)  # int8's
    # calibration batch, the model's inputs (None, or None given: the first batch a pass is given)


def ending_at(graph: Any, layer: str | None) -> Any:
    """The graph (graph.Graph) whose whole forward passes run on its runtime up to `layer`, and in TensorFlow after
    it, as the explanations' do: predictions then equal the explanations' own, to the last digit printed."""
    if graph.offload is None:
        return graph
    return dataclasses.replace(graph, offload=dataclasses.replace(graph.offload, layer=layer))


def choose(requested: str, model: Any, say: Say,
           calibration: Callable[[], np.ndarray | None] | None = None) -> Offload | None:
    """The Offload `--runtime` asks for on this model (a LoadedModel), or None: TensorFlow runs everything.

    auto: OpenVINO where it is installed (faster than TensorFlow on every CPU measured: README); a model in memory
    stays in TensorFlow, since its weights may change after its steps are made. At int8 (`calibration`: its batch)
    OpenVINO must run them; ExplainError where it cannot."""
    if requested not in RUNTIMES:
        raise BadArgument("--runtime", f"runtime is one of {', '.join(RUNTIMES)}, not {requested!r}")
    if model.precision == "int8":
        _check_int8(requested, model)
        return Offload("openvino", "int8", (model.height, model.width, model.channels), model.identity,
                       requested == "openvino", say, calibration=calibration)
    if requested == "tensorflow":
        say("runtime tensorflow (--runtime tensorflow)", False)
        return None
    explicit = requested != "auto"
    runtime = requested if explicit else "openvino"
    if not installed(runtime):
        if explicit:
            raise ExplainError(f"--runtime {runtime} needs {' and '.join(MODULES[runtime])}: "
                               f"{errors.install(EXTRAS[runtime])}")
        say(f"runtime tensorflow (auto: OpenVINO is not installed; {errors.install('openvino')} for faster "
            "forward passes)", False)
        return None
    if model.live:
        say(f"runtime tensorflow: {'--runtime ' + runtime if explicit else 'auto'}: a model in memory keeps to "
            "TensorFlow, since its weights may change after its steps are made", explicit)
        return None
    if getattr(model, "depth", None) is not None:
        say(f"runtime tensorflow: {'--runtime ' + runtime if explicit else 'auto'}: a model of volumes or clips keeps "
            "to TensorFlow", explicit)
        return None
    if getattr(model, "held", ()):
        say(f"runtime tensorflow: {'--runtime ' + runtime if explicit else 'auto'}: a model of several inputs keeps "
            "to TensorFlow, which feeds each example's held inputs", explicit)
        return None
    return Offload(runtime, model.precision, (model.height, model.width, model.channels), model.identity, explicit,
                   say)


def _check_int8(requested: str, model: Any) -> None:
    """ExplainError where --precision int8 cannot run: its passes are OpenVINO's, quantised by NNCF."""
    problem = None
    if requested in ("tensorflow", "onnxruntime"):
        problem = f"its forward passes run on OpenVINO, not --runtime {requested}"
    elif not errors.installed("openvino", "nncf"):
        problem = f"it needs OpenVINO and NNCF: {quantizing.EXTRA}"
    elif model.live:
        problem = "a model in memory keeps to TensorFlow (its weights may change): give its file"
    elif getattr(model, "depth", None) is not None or getattr(model, "held", ()):
        problem = "a model of volumes, clips or several inputs keeps to TensorFlow"
    if problem:
        raise ExplainError(f"--precision int8: {problem}")


def installed(runtime: str) -> bool:
    """Whether a runtime's packages are installed."""
    return errors.installed(*MODULES[runtime])


def forward(offload: Offload, part: str, key: object, fp32: Callable[[Any], Any],
            fallback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`fp32` (the model's input batch -> a tensor or a tuple of them, computed in float32) run by the runtime, as a
    function to call inside a tf.function; `fallback` where the runtime cannot take it. `part` names it for the
    user ("the feature pass up to conv5_block3_out"); `key` tells it from the model's other parts. It is converted
    when first called: a pass made and never run (a detector's scores-only cut, whose head alone is used) costs
    nothing."""
    chosen: list[Callable[[Any], Any]] = []

    def run(x: Any) -> Any:
        if not chosen:
            chosen.append(_chosen(offload, part, key, fp32, fallback, x))
        return chosen[0](x)

    return run


def _chosen(offload: Offload, part: str, key: object, fp32: Callable[[Any], Any],
            fallback: Callable[[Any], Any], first: Any) -> Callable[[Any], Any]:
    """The runtime's runner of the pass (converted, or read from the cache), else `fallback`, said once per part;
    `first`: the first batch it is given."""
    import tensorflow as tf

    started = time.perf_counter()
    first_time = part not in offload.said  # said once per model: predictions go through the explanations' feature pass
    offload.said.add(part)
    try:
        with tf.init_scope():  # traced and converted eagerly, whether or not a tf.function is being traced
            runner, how = _runner(offload, key, fp32, first)
    except Exception as error:  # any converter's or runtime's own error for a graph it cannot take
        if first_time:
            reason, name = _reason(error), _NAMES[offload.runtime]
            asked = "--precision int8" if offload.precision == "int8" else f"--runtime {offload.runtime}"
            loud = offload.explicit or offload.precision == "int8"  # asked for by name: always said
            offload.say(f"{asked}: {name} could not take {part} ({reason}); it runs on TensorFlow" if loud
                        else f"runtime tensorflow for {part}: {name} could not take it ({reason})", loud)
        return fallback
    if first_time:
        said = {"disk": "from the cache", "memory": "converted before, in this process",
                "first batch": "to be quantized on its first batch"}.get(
            how, f"{how} in {time.perf_counter() - started:.1f} s")
        offload.say(f"runtime {offload.runtime} for {part} ({said}; {_precision(offload)})", False)
    return runner.call


_NAMES = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
_NOISE = ("Check '", "FrontEnd API failed", "Model wasn't fully converted", "Summary:")


def _reason(error: BaseException) -> str:
    """Why a converter failed, in one line: the operations it has no rule for, else its first line that says
    something (OpenVINO's start with where in its C++ a check failed)."""
    lines = [line.strip(" -") for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("No conversion rule found for operations:"):
            return "no conversion rule for its operations " + line.split(":", 1)[1].strip()
    said = [line for line in lines if not line.startswith(_NOISE)]
    return (said[0] if said else first_line(error))[:200]


def _precision(offload: Offload) -> str:
    """The precision the runtime computes in: the run's, except ONNX Runtime's CPU provider, in fp32 alone."""
    if offload.precision == "int8":
        return "int8, calibrated on your images; what is not quantised in fp32"
    return "fp32" if offload.runtime == "onnxruntime" else offload.precision


@dataclass
class _Runner:
    """A converted pass: `run` maps a numpy batch to the outputs; `call` is the same inside a tf.function."""

    run: Callable[[np.ndarray], list[np.ndarray]]
    signature: dict[str, Any]  # the traced function's outputs: "structure" (leaf numbers), "specs" (shape, dtype)

    def call(self, x: Any) -> Any:
        import tensorflow as tf

        specs = [(tf.TensorShape(shape), tf.as_dtype(dtype)) for shape, dtype in self.signature["specs"]]
        if tf.executing_eagerly():
            outputs = [tf.constant(v) for v in self.run(np.asarray(x, np.float32))]
        else:
            outputs = tf.numpy_function(self.run, [tf.cast(x, tf.float32)], [d for _, d in specs], stateful=False)
            for value, (shape, _) in zip(outputs, specs):
                value.set_shape(shape)
        return _packed(self.signature["structure"], outputs)


def _packed(structure: Any, flat: list[Any]) -> Any:
    """The outputs in the traced function's structure: a leaf number is that output, a list a tuple of its items."""
    if isinstance(structure, int):
        return flat[structure]
    return tuple(_packed(item, flat) for item in structure)


def _signature(traced: Any) -> dict[str, Any]:
    import tensorflow as tf

    leaves = iter(range(len(traced.outputs)))
    structure = tf.nest.map_structure(lambda _: next(leaves), traced.structured_outputs)
    specs = [[t.shape.as_list(), t.dtype.name] for t in tf.nest.flatten(traced.structured_outputs)]
    return {"structure": json.loads(json.dumps(structure)), "specs": specs}  # as read back from disk: lists


_LOADED: dict[str, _Runner | Exception] = {}  # once per process: every Explainer of the same model shares it (or its
_LOCK = threading.Lock()                       # converter's error: not tried again)


def _runner(offload: Offload, key: object, fp32: Callable[[Any], Any], first: Any) -> tuple[_Runner, str]:
    """The runner of a pass, and where it came from: "memory" (this process made it), "disk" (the cache: nothing is
    traced) or "converted"; at int8, "quantized" from the float32 conversion (model/quantizing.py) on the run's
    calibration batch, else on `first`, the first batch the pass is given (once it holds values: a pass chosen while
    a step is traced is quantised at its first call)."""
    name = _key(offload, key)
    calibration = _calibration(offload, first) if offload.precision == "int8" else None
    loaded = name + offload.precision  # one conversion on disk, compiled once per precision
    if offload.precision == "int8":
        loaded += quantizing.key(calibration) if calibration is not None else f"first {offload.token}"
    with _LOCK:
        known = _LOADED.get(loaded)
        if isinstance(known, Exception):
            raise known
        if known is not None:
            return known, "memory"
        folder = cache_dir() / name if offload.identity is not None else None
        try:
            if folder is not None and (folder / "done").is_file():
                how, signature = "disk", json.loads((folder / "signature.json").read_text())
            else:
                how, (folder, signature) = "converted", _convert(offload, fp32, folder)
            if offload.precision == "int8":
                run, how = _int8(offload, folder, name, calibration, how)
            else:
                run = (_openvino if offload.runtime == "openvino" else _onnxruntime)(folder, offload.precision)
        except Exception as error:
            _LOADED[loaded] = error
            raise
        finally:
            if offload.identity is None and folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        runner = _LOADED[loaded] = _Runner(run, signature)
    return runner, how


def _calibration(offload: Offload, first: Any) -> np.ndarray | None:
    """int8's calibration batch: the run's (offload.calibration), else `first` where it holds values (None: it is a
    traced step's symbolic input)."""
    import tensorflow as tf

    given = offload.calibration() if offload.calibration is not None else None
    if given is not None:
        return np.asarray(given, np.float32)
    return None if tf.is_symbolic_tensor(first) else np.asarray(first, np.float32)


def _int8(offload: Offload, fp32: Path, name: str, calibration: np.ndarray | None,
          how: str) -> tuple[Callable[[np.ndarray], list[np.ndarray]], str]:
    """The quantised pass's numpy runner and where it came from: read from the cache (keyed by its calibration
    batch), or quantised now; without a batch yet, quantised on the first batch it runs on."""
    if offload.identity is None:
        raise ExplainError("--precision int8: a model in memory keeps to TensorFlow (its weights may change)")
    if calibration is None:
        made: list[Callable[[np.ndarray], list[np.ndarray]]] = []

        def first_call(x: np.ndarray) -> list[np.ndarray]:
            with _LOCK:
                if not made:
                    made.append(_int8(offload, fp32, name, np.asarray(x, np.float32), how)[0])
            return made[0](x)

        return first_call, "first batch"
    quantized = cache_dir() / f"{name}-int8-{quantizing.key(calibration)}"
    if not (quantized / "done").is_file():
        files.folder_in_place(quantized.parent, quantized, ".quantizing-",
                              lambda work: quantizing.quantize(fp32 / "model.xml", calibration, work))
        how = "quantized"
    return _openvino(quantized, "int8"), how


def cache_dir() -> Path:
    """Where converted passes are kept: $EXPLAIN_CACHE, else $XDG_CACHE_HOME/explain, else ~/.cache/explain."""
    given = os.environ.get("EXPLAIN_CACHE")
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "explain"


def _key(offload: Offload, key: object) -> str:
    """The cache entry's name: the runtime and its version, the model's identity, the part converted, the input."""
    import importlib.metadata

    version = importlib.metadata.version(MODULES[offload.runtime][0])
    identity = offload.identity if offload.identity is not None else f"memory {offload.token}"
    text = json.dumps([_FORMAT, offload.runtime, version, identity, repr(key), offload.shape])
    return f"{offload.runtime}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def _convert(offload: Offload, fp32: Callable[[Any], Any], folder: Path | None) -> tuple[Path, dict[str, Any]]:
    """Trace and convert into a new folder, then move it into place (runs converting the same model at once, shards or
    Ray workers, never read a half-written one); the folder, and the traced function's output signature."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *offload.shape], tf.float32)
    traced = tf.function(fp32, autograph=False).get_concrete_function(spec)
    checks = _checks(traced)
    if checks:  # the converters drop them: a model's own check of its inputs would pass whatever it is given
        raise ExplainError(f"it checks what it is given ({', '.join(checks)}), which {_NAMES[offload.runtime]} "
                           "would skip")
    signature = _signature(traced)
    root = folder.parent if folder is not None else Path(tempfile.gettempdir())

    def write(work: Path) -> None:
        if offload.runtime == "openvino":
            openvino = backend.openvino_quietly()
            converted = _outputs_only(openvino, openvino.convert_model(traced), [t.name for t in traced.outputs])
            openvino.save_model(converted, str(work / "model.xml"), compress_to_fp16=False)
        else:
            _to_onnx(traced, spec, work / "model.onnx")
        (work / "signature.json").write_text(json.dumps(signature))

    return files.folder_in_place(root, folder, ".converting-", write), signature


def _checks(traced: Any) -> list[str]:
    """The assertion operations in a traced function, its nested functions' (a tf.debugging.assert_* in a layer's
    call: an Assert inside a conditional) included."""
    graph = traced.graph.as_graph_def()
    nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
    return sorted({node.op for node in nodes if node.op in _ASSERTIONS})


_ASSERTIONS = ("Assert", "CheckNumerics", "CheckNumericsV2")


def _outputs_only(openvino: Any, converted: Any, wanted: list[str]) -> Any:
    """The converted model with the traced function's outputs alone: OpenVINO adds one for every IdentityN (the
    custom gradient of Keras' swish: 48 of them in EfficientNetB0), after the function's own."""
    found = converted.outputs
    if len(found) < len(wanted) or any(name not in found[i].get_names() for i, name in enumerate(wanted)):
        raise ExplainError("its converted outputs are not the function's")
    if len(found) == len(wanted):
        return converted
    return openvino.Model([found[i] for i in range(len(wanted))], converted.get_parameters(), "explain")


def _to_onnx(traced: Any, spec: Any, path: Path) -> None:
    import tensorflow as tf

    import tf2onnx

    from explain_cli.model.backend import native_stderr_silenced

    function = tf.function(lambda x: tf.nest.flatten(traced(x)), autograph=False)
    with native_stderr_silenced():
        tf2onnx.convert.from_function(function, input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name="x")],
                                      opset=17, output_path=str(path))


def _openvino(folder: Path, precision: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    openvino = backend.openvino_quietly()

    core = openvino.Core()
    hint = "bf16" if precision == "bf16" else "f32"  # int8: the layers left unquantised compute in float32
    compiled = core.compile_model(core.read_model(str(folder / "model.xml")), "CPU",
                                  {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
    idle: queue.SimpleQueue[Any] = queue.SimpleQueue()  # one request per thread at once: requests are not shared

    def run(x: np.ndarray) -> list[np.ndarray]:
        try:
            request = idle.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            results = request.infer({0: np.ascontiguousarray(x)})
            return [np.array(results[i]) for i in range(len(compiled.outputs))]
        finally:
            idle.put(request)

    return run


def _onnxruntime(folder: Path, precision: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> list[np.ndarray]:
        return list(session.run(None, {name: np.ascontiguousarray(x)}))

    return run
