"""Where results go: output file names, atomic writes, the manifest, and stdout rows."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np

from explain_cli.errors import ExplainError

MANIFEST = "manifest.jsonl"
EVALUATION = "evaluation.jsonl"  # explain evaluate's records; the report reads them too


@dataclass(frozen=True)
class Prediction:
    rank: int  # 1 = most probable
    class_index: int
    label: str
    probability: float

    def row(self) -> dict:
        """What a JSON line says of it."""
        return {"rank": self.rank, "class_index": self.class_index, "label": self.label,
                "probability": self.probability}


@dataclass(frozen=True)
class Value(Prediction):
    """A value head's output (a regression): `probability` holds the value, which is no probability."""

    def row(self) -> dict:
        return {"rank": self.rank, "class_index": self.class_index, "label": self.label, "value": self.probability}


@dataclass(frozen=True)
class Region(Prediction):
    """A class found in a segmentation: `probability` is its share of the pixels; with its mean probability over them."""

    mean_probability: float = 0.0

    def row(self) -> dict:
        return {"class_index": self.class_index, "label": self.label, "pixel_share": self.probability,
                "mean_probability": self.mean_probability}


def top_predictions(probabilities: np.ndarray, names: Sequence[str], n: int) -> list[Prediction]:
    order = np.argsort(-probabilities, kind="stable")[:n]
    return [Prediction(rank, int(i), label_of(names, int(i)), float(probabilities[i])) for rank, i in
            enumerate(order, start=1)]


@dataclass(frozen=True)
class Listing:
    """How an image's predictions are listed, by the kind of its model's head (model/heads.py): the most probable classes
    (one label per image, a binary head's two, a segmentation's classes by their share of pixels), the labels whose
    probability is at least `threshold`, highest first (several labels per image), or the value."""

    kind: str = "classes"
    threshold: float = 0.5

    def predictions(self, shown: np.ndarray, names: Sequence[str], top: int) -> list[Prediction]:
        if self.kind == "value":
            return [Value(1, 0, label_of(names, 0), float(shown[0]))]
        listed = top_predictions(shown, names, top)
        if self.kind == "labels":
            return [p for p in listed if p.probability >= self.threshold]
        return listed


def label_of(names: Sequence[str], class_index: int) -> str:
    """A class's name, or its number where the labels run out."""
    return names[class_index] if class_index < len(names) else str(class_index)


def safe_label(label: str) -> str:
    """A label as a file-name part: "tabby", "Granny_Smith", "n/a" -> "n_a"."""
    cleaned = re.sub(r"[^\w.+-]+", "_", label.strip(), flags=re.UNICODE).strip("._")
    return cleaned[:60] or "class"


# File systems cap a name at 255 bytes; leave room for the longest suffix ("figure.png") and margin.
MAX_NAME_BYTES = 200


def explanation_name(stem: PurePosixPath, method: str, class_index: int, label: str, suffix: str) -> PurePosixPath:
    """<stem>.<method>.<class>-<label>.<suffix>, e.g. cat.gradcam.281-tabby.jpg.

    A stem too long for a file name keeps its start and gets "~" and a hash of the whole, so it
    stays unique and recognisable.
    """
    tail = f".{method}.{class_index}-{safe_label(label)}.{suffix}"
    name = stem.name
    if _bytes(name + tail) > MAX_NAME_BYTES:
        digest = "~" + hashlib.sha1(_bytes_of(name)).hexdigest()[:10]
        while name and _bytes(name + digest + tail) > MAX_NAME_BYTES:
            name = name[:-1]
        name += digest
    return stem.with_name(name + tail)


def _bytes_of(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # names from disk may hold undecodable bytes


def _bytes(text: str) -> int:
    return len(_bytes_of(text))


TEMPORARY_PREFIX = ".explain-"


@contextlib.contextmanager
def writing_into(out_dir: Path) -> Iterator[None]:
    """Turn a failed write into one error for the whole run: a full disk or a read-only folder fails every
    image alike, so the batch stops with one message instead of one per image."""
    try:
        yield
    except OSError as error:
        raise ExplainError(f"cannot write to {out_dir}: {error.strerror or error}") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: no reader sees a partial file.

    The temporary name carries the process id, so a later run can tell a killed run's leftovers
    (see remove_stale_temporaries) from a running one's. It is created with mode 0666 and the
    user's umask applies, as for any new file (mkstemp's 0600 would survive the rename).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary, handle = _create_temporary(path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def folder_in_place(root: Path, into: Path | None, prefix: str, make: Callable[[Path], None]) -> Path:
    """A folder made whole: `make` writes into a new folder under `root`, which is marked "done" and moved into place
    as `into` (where another process put the same folder there first, theirs is kept), so that processes making it at
    once (shards, Ray workers) never read a half-written one; without `into`, the new folder itself. Nothing is left
    behind where `make` fails."""
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        make(work)
        (work / "done").touch()
        if into is None:
            return work
        try:
            os.replace(work, into)
        except OSError:  # another run put it there first: theirs is the same
            shutil.rmtree(work, ignore_errors=True)
        return into
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _create_temporary(folder: Path) -> tuple[Path, int]:
    while True:
        temporary = folder / f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.tmp"
        try:
            return temporary, os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


class FileSet:
    """The files written for one image: all of them exist under their final names, or none does.

    A failed write (a full disk) removes the ones already written, so no file is left that no
    manifest line names; the failure becomes the run's single "cannot write to" error.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.names: list[str] = []

    def write(self, name: str, data: bytes) -> None:
        with writing_into(self.out_dir):
            write_atomic(self.out_dir / name, data)
        self.names.append(name)

    @contextlib.contextmanager
    def complete_or_removed(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            remove_files(self.out_dir, self.names)
            raise


def remove_files(out_dir: Path, names: Sequence[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError):
            (out_dir / name).unlink(missing_ok=True)


# The manifest keys that name files, relative to the output folder.
FILE_KEYS = ("overlay", "heatmap", "figure", "map", "grid", "file", "segmentation")


def files_of(records: Sequence[dict]) -> list[str]:
    return [record[key] for record in records for key in FILE_KEYS if record.get(key)]


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete temporary files left by runs that were killed (their process is gone); say how many."""
    removed = 0
    for path in out_dir.rglob(f"{TEMPORARY_PREFIX}*.tmp"):
        pid = path.name[len(TEMPORARY_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Manifest:
    """`<out>/manifest.jsonl`, one JSON line per written explanation.

    An image's lines are written with a single write() on a descriptor opened for appending, after its
    files are in place: a line in the manifest means its files exist, and a killed run leaves each
    image either wholly in the manifest or not at all.
    """

    def __init__(self, out_dir: Path, name: str = MANIFEST) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / name
        self._descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, records: Sequence[dict]) -> None:
        """Append the lines in one write; on failure (a full disk) none of them stays, not even in part."""
        if not records:
            return
        data = "".join(_json_line(record) for record in records).encode("utf-8", "backslashreplace")
        size = os.fstat(self._descriptor).st_size
        try:
            if os.write(self._descriptor, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._descriptor, size)
            raise

    def close(self) -> None:
        os.close(self._descriptor)


def read_manifest(out_dir: Path, name: str = MANIFEST) -> list[dict]:
    """The records of `<out>/manifest.jsonl` (or `name`); an unreadable line (a crash mid-line) is ignored."""
    path = out_dir / name
    if not path.is_file():
        return []
    records = []
    for line in path.read_text("utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def record_file(name: str, shard: object | None) -> str:
    """The record file a run appends to: `manifest.jsonl`, or `manifest.shard-I-of-N.jsonl` for a shard, so
    that shards writing into one folder at once never share a file."""
    if shard is None:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.{shard}.{suffix}"


def read_records(out_dir: Path, name: str = MANIFEST) -> list[dict]:
    """The records of every file of a kind in the folder: `manifest*.jsonl` for `manifest.jsonl` (each shard's
    and the unsharded one), in name order."""
    stem, _, suffix = name.rpartition(".")
    records: list[dict] = []
    for path in sorted(out_dir.glob(f"{stem}*.{suffix}")):
        records += read_manifest(out_dir, path.name)
    return records


def explained_images(out_dir: Path, method: str, name: str = MANIFEST) -> set[str]:
    """The images the manifests (or other record files like `name`) list for `method` whose files all exist."""
    complete: dict[str, bool] = {}
    for record in read_records(out_dir, name):
        if record.get("method") != method or "image" not in record:
            continue
        present = all((out_dir / file).is_file() for file in files_of([record]))
        complete[record["image"]] = complete.get(record["image"], True) and present
    return {image for image, ok in complete.items() if ok}


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def format_predictions(image: str, predictions: Sequence[Prediction], style: str, truth: dict | None = None) -> str:
    """One image's predictions for stdout: "table" for a terminal, "tsv" when piped, or "json" lines
    (with `truth`, {"truth": class or None}, when --truth is given; the TSV keeps its five columns)."""
    if style == "json":
        return _json_line({"image": image, "predictions": [p.row() for p in predictions], **(truth or {})})
    if style == "tsv":  # a detection, a likeness or an attribution has its own columns
        return "".join(p.tsv(tsv_field(image)) if hasattr(p, "tsv") else
                       f"{tsv_field(image)}\t{p.rank}\t{p.class_index}\t{tsv_field(p.label)}\t{p.probability:.6f}\n"
                       if not hasattr(p, "mean_probability") else  # a segmentation's class: its share, its probability
                       f"{tsv_field(image)}\t{p.class_index}\t{tsv_field(p.label)}\t{p.probability:.6f}\t"
                       f"{p.mean_probability:.6f}\n"
                       for p in predictions)
    rows = [p.line() if hasattr(p, "line") else f"  {p.rank}. {p.label:<30} {p.class_index:>5}  " + (
        f"{p.probability:.6g}\n" if isinstance(p, Value) else f"{p.probability:7.2%}" + (
            f" of the pixels, p = {p.mean_probability:.3f}\n" if hasattr(p, "mean_probability") else "\n"))
        for p in predictions]
    return f"{image}\n" + "".join(rows or ["  (none listed)\n"])


@dataclass(frozen=True)
class Attribution(Prediction):
    """A model of several inputs: an input of values' gradient × input for the class explained (`label`), a value per
    feature, listed after the image's predictions."""

    input: str = ""
    values: tuple[float, ...] = ()

    def row(self) -> dict:
        return {"input": self.input, "class_index": self.class_index, "label": self.label,
                "attribution": list(self.values)}

    def tsv(self, image: str) -> str:
        return (f"{image}\tattribution\t{tsv_field(self.input)}\t{self.class_index}\t{tsv_field(self.label)}\t"
                + ",".join(f"{v:.6g}" for v in self.values) + "\n")

    def line(self) -> str:
        shown = ", ".join(f"{v:+.3g}" for v in self.values[:8]) + (", ..." if len(self.values) > 8 else "")
        return f"     {self.input} → {self.label}: gradient × input {shown}\n"


def tsv_field(text: str) -> str:
    """Text for one TSV field: its tabs and line breaks made spaces."""
    return text.replace("\t", " ").replace("\n", " ")
