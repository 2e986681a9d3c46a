"""Which inputs a run reads: files, folders walked recursively (sorted), `-` (paths on stdin, one a line), each with
the relative name its outputs mirror. A folder's pictures are found, and its volumes and videos too (NIfTI, DICOM,
video files): a model of pictures leaves those found in folders alone (inputs/grids.py reads them for a model of
volumes or clips).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, TextIO

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif", ".npy"}
)
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".dcm")  # NIfTI volumes; DICOM slices (a folder's are one series)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def grid_kind(path: Path) -> str | None:
    """"volume" or "clip" for a file whose name says it holds one (NIfTI, DICOM, a video), else None."""
    name = path.name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    return "clip" if name.endswith(VIDEO_SUFFIXES) else None


@dataclass(frozen=True)
class Source:
    """An input: a file (where it is, how to show it, the relative name its outputs take), or an image given in
    memory (its pixels, and its index among the images given)."""

    path: Path
    shown: str  # as the user wrote it, or as found under the folder they gave; an in-memory image's index
    stem: PurePosixPath  # output name without extension: "sub/img" for folder/sub/img.jpg
    pixels: Any = field(default=None, compare=False, hash=False, repr=False)  # a numpy array or PIL image in memory
    index: int | None = None  # an in-memory image's place among those given
    as_input: bool = False  # an array that is the model's input as it stands (not a picture to preprocess)
    placed: tuple[int, int, int, int] | None = field(default=None, compare=False)  # a letterboxed picture's place on
    # the input once decoded: (top, left, height, width)
    held: Any = field(default=None, compare=False, hash=False, repr=False)  # a model of several inputs: the example's
    # items for the others (inputs/held.Held), and once read, their values as the model takes them
    held_values: tuple = field(default=(), compare=False, hash=False, repr=False)
    grid: Any = field(default=None, compare=False)  # a volume or a clip (inputs/grids.Grid): what it is, which frames,
    # and once read, its own sides, its affine or its frame rate

    @property
    def key(self) -> str | int:
        """What the library calls it: its index if it was given in memory, else its path as shown."""
        return self.index if self.index is not None else self.shown

    @property
    def relative(self) -> str:
        """The path relative to the folder it was found in (its name when given directly)."""
        return self.stem.with_name(self.path.name).as_posix()


def discover(arguments: Iterable[str], stdin: TextIO, skip_dir: Path | None = None) -> list[Source]:
    """The files a run reads, in order. Missing arguments become Sources too: they fail when read."""
    sources: list[Source] = []
    for argument in arguments:
        if argument == "-":
            sources.extend(file_source(line.rstrip("\r\n")) for line in stdin if line.strip())
        elif Path(argument).is_dir():
            sources.extend(_walk(Path(argument), skip_dir))
        else:
            sources.append(file_source(argument))
    return _unique_stems(sources)


def file_source(argument: str) -> Source:
    path = Path(argument)
    return Source(path=path, shown=argument, stem=PurePosixPath(_stem(path)), grid=_grid(path, walked=False))


def _stem(path: Path) -> str:
    """Its name without its extension (a NIfTI's two: "scan" for scan.nii.gz)."""
    name = path.name
    return name[:-len(".nii.gz")] if name.lower().endswith(".nii.gz") and len(name) > 7 else (path.stem or name)


def _grid(path: Path, walked: bool) -> Any:
    from explain_cli.inputs.grids import Grid

    kind = grid_kind(path)
    return None if kind is None else Grid(kind, walked=walked)


def _walk(folder: Path, skip_dir: Path | None) -> Iterable[Source]:
    skip = skip_dir.resolve() if skip_dir is not None else None
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if skip is None or (here / d).resolve() != skip)
        for name in sorted(files):
            path = here / name
            if path.suffix.lower() in IMAGE_EXTENSIONS or grid_kind(path):
                relative = path.relative_to(folder)
                yield Source(path=path, shown=str(path), stem=PurePosixPath(relative.with_name(_stem(path)).as_posix()),
                             grid=_grid(path, walked=True))


def _unique_stems(sources: list[Source]) -> list[Source]:
    """Give each source its own output name: a repeated one gets "-2", "-3"... (two cat.jpg named directly)."""
    seen: set[PurePosixPath] = set()
    unique: list[Source] = []
    for source in sources:
        stem, n = source.stem, 1
        while stem in seen:
            n += 1
            stem = source.stem.with_name(f"{source.stem.name}-{n}")
        seen.add(stem)
        unique.append(source if stem == source.stem else dataclasses.replace(source, stem=stem))
    return unique
