"""Each runtime a model file is run by, opened into a `Runner`: ONNX Runtime for .onnx, LiteRT's interpreter for .tflite,
TensorFlow for a SavedModel folder. A runner says what the file says of itself (its input's shape and dtype, whether
its output ends in a softmax or a sigmoid, its metadata) and runs a batch in the file's own layout and dtype. A file of
several inputs is run on one (the one named, else its first picture), the others held as each example gives them
(inputs/held.py): `run_all` takes their values after the batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli.errors import BadArgument, ExplainError, install
from explain_cli.model.backend import native_stderr_silenced


@dataclass
class Runner:
    shape: tuple[Any, ...]  # the input's shape as the file gives it (batch first; None or a name where free)
    dtype: Any  # numpy dtype of the input
    run_all: Callable[[np.ndarray], list[np.ndarray]]  # a batch in the file's layout and dtype -> every output, raw
    outputs: tuple[tuple[str, tuple[Any, ...]], ...]  # each output's name and shape, in run_all's order
    ends_in: str | None = None  # "softmax" / "sigmoid" when the file's graph says so (of its first output)
    quantised: tuple[float, int] | None = None  # the input's (scale, zero point), for a quantised LiteRT model
    metadata: dict[str, str] = field(default_factory=dict)  # what the file says of itself (ONNX's metadata_props)
    name: str = ""  # the input explained
    held: tuple[tuple[str, tuple[Any, ...], Any], ...] = ()  # the file's other inputs: name, shape (batch first), dtype


def open_runner(kind: str, path: Path, input_name: str | None = None) -> Runner:
    """The runner of a model file of `kind` ("ONNX", "LiteRT", "SavedModel"), explaining its input `input_name`."""
    opener: Callable[[Path, str | None], Runner] = {"ONNX": _onnx, "LiteRT": _litert, "SavedModel": _saved_model}[kind]
    return opener(path, input_name)


def _explained(path: Path, inputs: Sequence[Any], name_of: Callable[[Any], str], shape_of: Callable[[Any], Sequence[Any]],
               wanted: str | None) -> tuple[Any, list[Any]]:
    """The input explained (the one named, else the first of rank 4: a picture) and the others; BadArgument for a
    name the file does not have, ExplainError for a file with no picture input."""
    names = [name_of(i) for i in inputs]
    if wanted is not None and wanted not in names:
        raise BadArgument("--input", f"unknown input {wanted!r}; {path.name}'s inputs: {', '.join(names)}")
    chosen = names.index(wanted) if wanted is not None else next(
        (i for i, given in enumerate(inputs) if len(shape_of(given)) == 4), None)
    if chosen is None:
        raise ExplainError(f"{path}: none of its inputs ({', '.join(names)}) is a batch of pictures")
    return inputs[chosen], [given for i, given in enumerate(inputs) if i != chosen]


# --- the runtimes ----------------------------------------------------------------------------------------------------


def _onnx(path: Path, input_name: str | None = None) -> Runner:
    try:
        import onnxruntime
    except ImportError:
        raise ExplainError(f"{path}: ONNX models need ONNX Runtime: {install('onnx')}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first, others = _explained(path, session.get_inputs(), lambda i: str(i.name), lambda i: i.shape, input_name)
    pictures = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(double)": np.float64,
                "tensor(float16)": np.float16}
    types = {**pictures, "tensor(int64)": np.int64, "tensor(int32)": np.int32}  # a held input may be integers
    dtype = pictures.get(first.type)
    if dtype is None:
        raise ExplainError(f"{path}: its input is a {first.type}; explain feeds float or uint8 images")
    outputs = tuple((o.name, tuple(o.shape)) for o in session.get_outputs())

    def run_all(batch: np.ndarray, *held: np.ndarray) -> list[np.ndarray]:
        return list(session.run(None, {first.name: batch, **{o.name: v for o, v in zip(others, held)}}))

    metadata = dict(session.get_modelmeta().custom_metadata_map or {})
    return Runner(tuple(first.shape), dtype, run_all, outputs, _onnx_ends_in(path, outputs[0][0]), metadata=metadata,
                  name=str(first.name), held=tuple((str(o.name), tuple(o.shape), types.get(o.type, np.float32))
                                                   for o in others))


def _onnx_ends_in(path: Path, output: str) -> str | None:
    """"softmax" / "sigmoid" when the node making the output (through Identity nodes) is one; None if unknown."""
    try:
        import onnx
    except ImportError:  # ONNX Runtime alone does not show the graph: the probe decides
        return None
    graph = onnx.load(str(path), load_external_data=False).graph
    makers = {name: node for node in graph.node for name in node.output}
    node = makers.get(output)
    while node is not None and node.op_type == "Identity":
        node = makers.get(node.input[0])
    return {"Softmax": "softmax", "Sigmoid": "sigmoid"}.get(node.op_type) if node is not None else None


def _litert(path: Path, input_name: str | None = None) -> Runner:
    from explain_cli.model.backend import load_tensorflow

    tf, _ = load_tensorflow()
    try:  # LiteRT's own package where it is installed; TensorFlow's interpreter, deprecated in its favour, else
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings(), native_stderr_silenced():  # its deprecation, its delegate's start-up line
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=str(path))
    first, others = _explained(path, interpreter.get_input_details(), _litert_name,
                               lambda i: i.get("shape_signature", i["shape"]), input_name)
    details = interpreter.get_output_details()

    def signature(given: Any) -> tuple[int | None, ...]:
        found = tuple(int(d) if d > 0 else None for d in given.get("shape_signature", given["shape"]))
        return (None, *found[1:])

    shape = signature(first)
    allocated: list[tuple[int, ...]] = []

    def run(batch: np.ndarray, *held: np.ndarray) -> np.ndarray:
        if not allocated or allocated[0] != batch.shape:
            interpreter.resize_tensor_input(first["index"], list(batch.shape))
            for other, value in zip(others, held):
                interpreter.resize_tensor_input(other["index"], list(value.shape))
            with native_stderr_silenced():
                interpreter.allocate_tensors()
            allocated[:] = [batch.shape]
        interpreter.set_tensor(first["index"], batch)
        for other, value in zip(others, held):
            interpreter.set_tensor(other["index"], value)
        interpreter.invoke()
        found = []
        for output in details:
            out = interpreter.get_tensor(output["index"]).astype(np.float32)
            scale, zero = output["quantization"]
            found.append((out - zero) * scale if scale else out)
        return found

    scale, zero = first["quantization"]
    outputs = tuple((str(o["name"]), tuple(int(d) if d > 0 else None for d in o.get("shape_signature", o["shape"])))
                    for o in details)
    return Runner(shape, first["dtype"], run, outputs, _litert_ends_in(interpreter, details[0]["index"]),
                  (float(scale), int(zero)) if scale else None, name=_litert_name(first),
                  held=tuple((_litert_name(o), signature(o), o["dtype"]) for o in others))


def _litert_name(given: Any) -> str:
    """An input's name as the model that was converted called it: "serving_default_meta:0" is "meta"."""
    import re

    return re.sub(r"^serving_default_|:\d+$", "", str(given["name"]))


def _litert_ends_in(interpreter: Any, output: int) -> str | None:
    """"softmax" / "sigmoid" when the op writing the output (through (de)quantisations and reshapes) is one."""
    try:  # the ops, where this interpreter lists them (a delegate's node writes copies: the first writer counts)
        ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    except AttributeError:
        return None
    writers = {int(t): op for op in ops for t in op["outputs"]}
    op = writers.get(output)
    while op is not None and op["op_name"] in ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE"):
        op = writers.get(int(op["inputs"][0]))
    return {"SOFTMAX": "softmax", "LOGISTIC": "sigmoid"}.get(op["op_name"]) if op is not None else None


def _saved_model(path: Path, input_name: str | None = None) -> Runner:
    from explain_cli.model.backend import load_tensorflow

    tf, _ = load_tensorflow()
    loaded = tf.saved_model.load(str(path))
    signatures = dict(loaded.signatures)
    function = signatures.get("serving_default") or next(iter(signatures.values()), None)
    if function is None:
        raise ExplainError(f"{path}: the SavedModel has no signature to call")
    _, named = function.structured_input_signature
    (name, spec), others = _explained(path, list(named.items()), lambda i: str(i[0]), lambda i: i[1].shape,
                                      input_name)
    outputs = sorted(function.structured_outputs)

    def run_all(batch: np.ndarray, *held: np.ndarray) -> list[np.ndarray]:
        found = function(**{name: tf.constant(batch), **{o: tf.constant(v) for (o, _), v in zip(others, held)}})
        return [found[output].numpy() for output in outputs]

    shapes = tuple((output, tuple(function.structured_outputs[output].shape.as_list())) for output in outputs)
    return Runner(tuple(spec.shape.as_list()), spec.dtype.as_numpy_dtype, run_all, shapes, name=str(name),
                  held=tuple((str(o), tuple(s.shape.as_list()), s.dtype.as_numpy_dtype) for o, s in others))
