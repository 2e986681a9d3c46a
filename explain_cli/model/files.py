"""Models explain can only run: a TensorFlow SavedModel folder, a LiteRT (.tflite) file, an ONNX file.

They have no layers to cut, so only forward passes explain them (methods/perturbation.py). Each runtime is opened
into a `Runner` that says what the file says of itself (its input's shape, layout and dtype, whether its output ends
in a softmax or a sigmoid) and runs a batch in the file's own layout and dtype. `load` wraps it as a model like a
Keras one for the Explainer: uint8 or float pixels in NHWC, 0-255 -> each class's probability. What the file does not
say comes from the options (`Runtime`), else from one probing pass, and `notes` say which.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli.inputs import labels as labels_module
from explain_cli.errors import BadArgument, ExplainError
from explain_cli.inputs import held as holding
from explain_cli.inputs.held import HeldInput, held_input
from explain_cli.model.heads import Head
from explain_cli.model.runners import Runner, open_runner

KINDS = {".onnx": "ONNX", ".tflite": "LiteRT"}
NOT_FOR_THEM = "it has no layers, so only rise and occlusion explain it (and random, to evaluate against)"


@dataclass(frozen=True)
class Runtime:
    """What the user says of a model file that may not say it: (height, width), "nhwc" or "nchw", and whether its
    output is "logits" or "probabilities"."""

    input_size: tuple[int, int] | None = None
    layout: str | None = None
    outputs: str | None = None
    threshold: float = 0.5  # a segmentation of one sigmoid channel: the foreground is where p ≥ this
    input_name: str | None = None  # a file of several inputs: the one explained (default: its first picture)


@dataclass
class Opened:
    """A model file opened: its runner, what it takes (NHWC or NCHW, height, width, channels), and `feed`: pixels
    (n, H, W, C) NHWC -> every output, float32, the input scaled by `scaling` (the preprocessing) on the way in."""

    path: Path
    kind: str
    runner: Runner
    layout: str
    height: int
    width: int
    channels: int
    notes: list[str]

    def feed(self, pixels: np.ndarray, scaling: Callable[[Any], Any] = lambda given: given) -> list[np.ndarray]:
        x = self._as_file_takes(pixels, scaling, self.runner.dtype, self.runner.quantised)
        held = self._held(len(x), scaling)
        first = self.runner.shape[0]
        fixed = first if isinstance(first, int) and first > 0 else None
        if fixed is None:
            return [np.asarray(out, np.float32) for out in self.runner.run_all(x, *held)]
        # a file exported for one batch size (PyTorch's default is 1): run in its batches, the last padded
        pieces: list[list[np.ndarray]] = []
        for start in range(0, len(x), fixed):
            padded = [_padded(given[start:start + fixed], fixed) for given in (x, *held)]
            count = min(fixed, len(x) - start)
            pieces.append([np.asarray(out, np.float32)[:count] for out in self.runner.run_all(*padded)])
        return [np.concatenate(parts) for parts in zip(*pieces)]

    def _as_file_takes(self, pixels: np.ndarray, scaling: Callable[[Any], Any], dtype: Any,
                       quantised: tuple[float, int] | None) -> np.ndarray:
        """Pixels (n, H, W, C) NHWC as the file takes a picture: scaled, in its layout and dtype."""
        x = np.asarray(scaling(pixels.astype(np.float32)), np.float32)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        if quantised is not None:
            scale, zero = quantised
            x = np.round(x / scale + zero)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            x = np.clip(np.round(x), info.min, info.max)
        return np.ascontiguousarray(x.astype(dtype))

    def _held(self, rows: int, scaling: Callable[[Any], Any]) -> list[np.ndarray]:
        """The batch's values of the file's other inputs (inputs/held.py), each example's repeated to `rows`: a
        picture as the explained one is fed, values in the input's dtype."""
        values = holding.current()
        if len(values) != len(self.runner.held):
            raise ExplainError(f"{self.path}: the model has several inputs: run it on examples that give every input")
        found = []
        for (_, shape, dtype), value in zip(self.runner.held, values):
            value = np.tile(value, (rows // len(value),) + (1,) * (value.ndim - 1)) if len(value) != rows else value
            found.append(self._as_file_takes(value, scaling, dtype, None) if len(shape) == 4 else
                         np.ascontiguousarray(np.asarray(value).astype(dtype)))
        return found


def _padded(piece: np.ndarray, size: int) -> np.ndarray:
    """A batch's last piece filled to the file's fixed batch size with copies of its last row."""
    return np.concatenate([piece, np.repeat(piece[-1:], size - len(piece), axis=0)])


def open_file(spec: str, runtime: Runtime) -> Opened:
    """Open a model file with its runtime and read (or take from `runtime`) its input's layout and size."""
    path = Path(spec)
    kind = KINDS.get(path.suffix.lower(), "SavedModel")
    article = "an" if kind == "ONNX" else "a"
    try:
        runner = _opened_for_shapes.pop(_identity(path), None) or open_runner(kind, path, runtime.input_name)
    except ExplainError:
        raise
    except Exception as error:  # each runtime's own error for a file it cannot read
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExplainError(f"{path}: not {article} {kind} model it can read ({first})") from None
    notes = [f"{article} {kind} model, run by {'ONNX Runtime' if kind == 'ONNX' else 'TensorFlow'}"]
    layout = _layout(path, runner.shape, runtime.layout, notes)
    height, width, channels = _size(path, runner.shape, layout, runtime.input_size, notes)
    return Opened(path, kind, runner, layout, height, width, channels, notes)


@dataclass
class RuntimeModel:
    """A model explain runs but cannot cut: the fields a LoadedModel has, and its two forward functions."""

    name: str
    height: int
    width: int
    channels: int
    labels: Any
    head: Head
    forward: Callable[[np.ndarray], np.ndarray]  # (n, H, W, C) pixels 0-255, NHWC -> (n, classes) probabilities
    notes: list[str] = field(default_factory=list)
    unscaled: Callable[[np.ndarray], np.ndarray] | None = None  # forward from the model's input as it stands (NHWC)
    keras_model: Any = None
    default_layer: str | None = None
    precision: str = "fp32"
    live: bool = False
    output: str | None = None
    pixels: Callable[[np.ndarray], np.ndarray] | None = None  # a segmentation: pixels -> (n, h, w, classes) probabilities
    unscaled_pixels: Callable[[np.ndarray], np.ndarray] | None = None
    input_name: str | None = None  # a file of several inputs: the one explained
    held: tuple[HeldInput, ...] = ()  # and the others, held as each example gives them (inputs/held.py)

    def as_input(self) -> RuntimeModel:
        """The model fed its input as it stands (an array a user already scaled): no preprocessing."""
        assert self.unscaled is not None, "a runtime's model is made with its unscaled forward"
        return dataclasses.replace(self, forward=self.unscaled, pixels=self.unscaled_pixels)


def is_runtime_model(spec: Any) -> bool:
    """Whether `spec` (a path, or any model given) names a file only a runtime can run: .onnx, .tflite, or a SavedModel
    folder."""
    if not isinstance(spec, (str, Path)):
        return False
    path = Path(spec)
    return path.suffix.lower() in KINDS or (path.is_dir() and (path / "saved_model.pb").is_file())


def made_by_ultralytics(metadata: dict[str, str]) -> bool:
    """Whether a file's metadata says Ultralytics exported it (its YOLOs: pixels scaled x / 255, classes named)."""
    return "ultralytics" in metadata.get("author", "").lower() or {"stride", "names", "imgsz"} <= set(metadata)


def names_in(metadata: dict[str, str]) -> tuple[str, ...] | None:
    """The class names a file's metadata gives (Ultralytics' "names": {0: 'person', ...}), or None."""
    import ast

    try:
        names = ast.literal_eval(metadata.get("names", ""))
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        return tuple(str(names[i]) for i in range(len(names)))
    return tuple(str(n) for n in names) if isinstance(names, (list, tuple)) and names else None


def output_shapes(spec: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """A model file's outputs, by name and shape, read by opening it with its runtime. The runner is kept for the
    open_file that usually follows (what task the file is for, then the file opened for it): a SavedModel takes
    seconds to load."""
    path = Path(spec)
    runner = open_runner(KINDS.get(path.suffix.lower(), "SavedModel"), path)
    _opened_for_shapes.clear()  # one at most: a runner is handed on once, never shared
    _opened_for_shapes[_identity(path)] = runner
    return runner.outputs  # type: ignore[no-any-return]


_opened_for_shapes: dict[tuple[str, int, int], Any] = {}


def _identity(path: Path) -> tuple[str, int, int]:
    """The file as it is now: its place, and its (or a SavedModel folder's graph's) change time and size."""
    try:
        status = (path / "saved_model.pb" if path.is_dir() else path).stat()
        return str(path.resolve()), status.st_mtime_ns, status.st_size
    except OSError:
        return str(path), -1, -1


def load(spec: str, given_labels: Any, preprocess: Callable[[Any], Any], runtime: Runtime) -> RuntimeModel:
    """Open the file and read (or take from `runtime`) its input size, layout and outputs."""
    opened = open_file(spec, runtime)
    path, notes, height, width, channels = opened.path, opened.notes, opened.height, opened.width, opened.channels
    if len(opened.runner.outputs[0][1]) == 4:  # a class score per pixel: a segmentation
        return _segmenter(opened, given_labels, preprocess, runtime)

    def raw(pixels: np.ndarray, scaling: Callable[[Any], Any] = preprocess) -> np.ndarray:
        out = opened.feed(pixels, scaling)[0]
        return out.reshape(len(out), -1)

    held = held_inputs(opened)
    with holding.batch(tuple(np.zeros((1, *given.shape), np.float32) for given in held) or None):  # grey, zeros
        probe = raw(np.full((1, height, width, channels), 128.0, np.float32))
    outputs = _outputs(probe, opened.runner.ends_in, runtime.outputs, notes)
    size = probe.shape[1]
    head = Head("binary" if size == 1 else "classes", "sigmoid" if outputs == "probabilities" and size == 1 else
                "softmax" if outputs == "probabilities" else "linear", size, shape=(size,))

    def forward(pixels: np.ndarray) -> np.ndarray:
        return _probabilities(raw(pixels), outputs, size)

    def forward_input(x: np.ndarray) -> np.ndarray:
        return _probabilities(raw(x, lambda given: given), outputs, size)

    names = labels_module.for_model(2 if size == 1 else size, given_labels)
    return RuntimeModel(path.name, height, width, channels, names, head, forward, notes, unscaled=forward_input,
                        input_name=opened.runner.name if held else None, held=held)


def held_inputs(opened: Opened) -> tuple[HeldInput, ...]:
    """A file's inputs besides the one explained: a picture's shape as it is fed (h, w, c), values' as they are."""
    return tuple(held_input(str(opened.path), name, tuple(shape[1:]), _shown(shape), opened.layout == "nchw")
                 for name, shape, _ in opened.runner.held)


def _segmenter(opened: Opened, given_labels: Any, preprocess: Callable[[Any], Any], runtime: Runtime) -> RuntimeModel:
    """A segmentation model file: its output per pixel, in the input's layout (NHWC or NCHW), C ≥ 2 classes (a softmax
    or logits) or one sigmoid channel (the foreground where p ≥ the threshold, the background its complement)."""
    notes = opened.notes
    blank = np.full((1, opened.height, opened.width, opened.channels), 128.0, np.float32)
    probe = opened.feed(blank, preprocess)[0]
    channels_first = opened.layout == "nchw"
    size = int(probe.shape[1] if channels_first else probe.shape[3])
    last = np.moveaxis(probe, 1, -1) if channels_first else probe  # (1, h, w, C): each pixel's scores a row
    outputs = _outputs(last.reshape(-1, last.shape[-1]), opened.runner.ends_in, runtime.outputs, notes,
                       "a probability at each pixel")
    notes.append(f"a segmentation: {size} {'class' if size > 1 else 'sigmoid channel'}{'es' * (size > 1)} per pixel, "
                 f"laid out {opened.layout.upper()} as its input")

    def probabilities(raw: np.ndarray) -> np.ndarray:
        scores = np.moveaxis(raw, 1, -1) if channels_first else raw
        if size == 1:
            positive = scores if outputs == "probabilities" else 1.0 / (1.0 + np.exp(-scores))
            return np.concatenate([1.0 - positive, positive], axis=-1)
        if outputs == "probabilities":
            return scores
        shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]

    head = Head("pixels", "sigmoid" if size == 1 else "softmax", size,
                shape=tuple(last.shape[1:]),
                threshold=runtime.threshold)

    def pixels(given: np.ndarray) -> np.ndarray:
        return probabilities(opened.feed(given, preprocess)[0])

    def unscaled_pixels(given: np.ndarray) -> np.ndarray:
        return probabilities(opened.feed(given)[0])

    def shares(of: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        from explain_cli.model.heads import numpy_masks

        return lambda given: numpy_masks(head, of(given)).mean(axis=(1, 2))  # type: ignore[no-any-return]

    names = labels_module.for_model(head.classes, given_labels)
    return RuntimeModel(opened.path.name, opened.height, opened.width, opened.channels, names, head, shares(pixels),
                        notes, unscaled=shares(unscaled_pixels), pixels=pixels, unscaled_pixels=unscaled_pixels)


def _probabilities(out: np.ndarray, outputs: str, size: int) -> np.ndarray:
    """(n, classes) probabilities from the file's outputs; one unit is a binary head: (1 − p, p)."""
    if size == 1:
        positive = out if outputs == "probabilities" else 1.0 / (1.0 + np.exp(-out))
        return np.concatenate([1.0 - positive, positive], axis=1)
    if outputs == "probabilities":
        return out
    shifted = np.exp(out - out.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _layout(path: Path, shape: Sequence[Any], given: str | None, notes: list[str]) -> str:
    if len(shape) != 4:
        raise ExplainError(f"{path}: its input has shape {_shown(shape)}; explain feeds images, (batch, height, width, "
                           "channels) or (batch, channels, height, width)")
    if given is not None:
        notes.append(f"layout {given.upper()} (--layout)")
        return given
    last, second = shape[3] in (1, 3), shape[1] in (1, 3)
    if last == second:
        raise BadArgument("--layout", f"{path}: its input {_shown(shape)} could be NHWC or NCHW; say which")
    layout = "nhwc" if last else "nchw"
    notes.append(f"layout {layout.upper()} (from the file: input {_shown(shape)})")
    return layout


def _size(path: Path, shape: Sequence[Any], layout: str, given: tuple[int, int] | None,
          notes: list[str]) -> tuple[int, int, int]:
    height, width, channels = (shape[1], shape[2], shape[3]) if layout == "nhwc" else (shape[2], shape[3], shape[1])
    if not isinstance(channels, int) or channels not in (1, 3):
        raise ExplainError(f"{path}: its input has {channels} channels in {layout.upper()}; explain feeds 1 or 3")
    fixed = isinstance(height, int) and isinstance(width, int)
    if given is not None:
        if fixed and (height, width) != given:
            raise BadArgument("--input-size", f"{path} takes {height}×{width} images, not {given[0]}×{given[1]}")
        notes.append(f"input {given[0]}×{given[1]} (--input-size)")
        return given[0], given[1], channels
    if not fixed:
        raise BadArgument("--input-size", f"{path}: its input {_shown(shape)} has no fixed height and width; give "
                          "--input-size HEIGHTxWIDTH")
    return int(height), int(width), channels


def _outputs(probe: np.ndarray, ends_in: str | None, given: str | None, notes: list[str],
             what: str = "a probability vector") -> str:
    """Whether outputs (n, C), a row each, are probabilities or logits: as given, as the graph ends, or as the rows on a
    grey image read (in [0, 1], and for C ≥ 2 summing to 1)."""
    if given is not None:
        notes.append(f"outputs read as {given} (--outputs)")
        return given
    if ends_in is not None:
        notes.append(f"outputs read as probabilities (the graph ends in a {ends_in})")
        return "probabilities"
    bounded = bool(np.all((probe >= 0) & (probe <= 1)))
    summed = probe.shape[1] == 1 or bool(np.allclose(probe.sum(axis=1), 1.0, atol=0.02))  # quantised outputs round
    outputs = "probabilities" if bounded and summed else "logits"
    notes.append(f"outputs read as {outputs} (the file does not say; its output on a grey image "
                 f"{'is' if outputs == 'probabilities' else 'is not'} {what}; --outputs to say)")
    return outputs


def _shown(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("?" if not isinstance(d, int) else str(d) for d in shape) + ")"
