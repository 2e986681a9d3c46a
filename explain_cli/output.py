"""Where results go: output file names, atomic writes, the manifest, and stdout rows."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence, TextIO

import numpy as np

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Prediction:
    rank: int  # 1 = most probable
    class_index: int
    label: str
    probability: float


def top_predictions(probabilities: np.ndarray, names: Sequence[str], n: int) -> list[Prediction]:
    order = np.argsort(-probabilities, kind="stable")[:n]
    return [
        Prediction(rank, int(i), names[int(i)] if int(i) < len(names) else str(i), float(probabilities[i]))
        for rank, i in enumerate(order, start=1)
    ]


def safe_label(label: str) -> str:
    """A label as a file-name part: "tabby", "Granny_Smith", "n/a" -> "n_a"."""
    cleaned = re.sub(r"[^\w.+-]+", "_", label.strip(), flags=re.UNICODE).strip("._")
    return cleaned[:60] or "class"


def explanation_name(stem: PurePosixPath, method: str, class_index: int, label: str, suffix: str) -> PurePosixPath:
    """<stem>.<method>.<class>-<label>.<suffix>, e.g. cat.gradcam.281-tabby.jpg."""
    return stem.with_name(f"{stem.name}.{method}.{class_index}-{safe_label(label)}.{suffix}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: no reader sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class Manifest:
    """`<out>/manifest.jsonl`, one whole JSON line per written explanation."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / MANIFEST
        self._stream = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        # One write call per line, flushed at once: an interruption leaves whole lines only.
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def write_predictions(stream: TextIO, image: str, predictions: Sequence[Prediction], style: str) -> None:
    """One image's predictions on stdout: "table" for a terminal, "tsv" when piped, or "json" lines."""
    if style == "json":
        record = {"image": image, "predictions": [p.__dict__ for p in predictions]}
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif style == "tsv":
        for p in predictions:
            stream.write(f"{_tsv(image)}\t{p.rank}\t{p.class_index}\t{_tsv(p.label)}\t{p.probability:.6f}\n")
    else:
        stream.write(f"{image}\n")
        for p in predictions:
            stream.write(f"  {p.rank}. {p.label:<30} {p.class_index:>5}  {p.probability:7.2%}\n")
    stream.flush()


def _tsv(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")
