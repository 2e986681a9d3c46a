"""Ground truth: each input's true class, from its folder's name or from a CSV file.

`--truth folders` reads the layout of Keras' image_dataset_from_directory (`val/tabby/x.jpg`: tabby);
`--truth FILE.csv` has the header `image,class`, where `image` is the path as explain prints it or
relative to the folder given, and `class` a class number, a label or a WordNet id.
"""

from __future__ import annotations

import csv
import difflib
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from explain_cli.errors import BadArgument, ExplainError
from explain_cli.inputs.sources import Source
from explain_cli.inputs.labels import Labels


class TruthError(BadArgument):
    """The truth given does not fit the model's labels or the inputs: a usage error of --truth."""

    def __init__(self, message: str, option: str = "--truth") -> None:
        super().__init__(option, message)


def read(spec: str, sources: Sequence[Source], labels: Labels, several: bool = False) -> dict[Source, Any]:
    """The true class of each source that has one (`spec`: "folders" or a CSV file's path); with `several` (a model
    of several labels per image), each source's set of true labels: a CSV image,labels with the labels separated by
    ';' (an empty cell: none of them), or a folder's one label."""
    if spec == "folders":
        found = _from_folders(sources, labels)
        return {source: frozenset({label}) for source, label in found.items()} if several else found
    if several:
        return _sets_from_csv(Path(spec), sources, labels)
    return _from_csv(Path(spec), sources, labels)


def _from_folders(sources: Sequence[Source], labels: Labels) -> dict[Source, int]:
    found: dict[Source, int] = {}
    unknown: dict[str, str] = {}
    for source in sources:
        folder = source.path.parent.name
        try:
            found[source] = labels.resolve(folder)
        except ExplainError as error:
            unknown.setdefault(folder, str(error))
    if unknown:
        names = [n for n in unknown if n]
        first = names[0] if names else ""
        close = difflib.get_close_matches(first, labels.names, n=5, cutoff=0.5)
        hint = f"; close labels: {', '.join(close)}" if close else ""
        raise TruthError(f"--truth folders: {len(unknown)} folder name(s) are no label of the model, first "
                         f"{first!r} (of {sources[0].path.parent if sources else ''}){hint}")
    return found


def _from_csv(path: Path, sources: Sequence[Source], labels: Labels) -> dict[Source, int]:
    found: dict[Source, int] = {}
    for source, rows in rows_by_source(path, ("image", "class"), sources).items():
        number, row = rows[-1]
        found[source] = resolve(labels, row["class"], path, number)
    return found


def _sets_from_csv(path: Path, sources: Sequence[Source], labels: Labels) -> dict[Source, frozenset[int]]:
    found: dict[Source, frozenset[int]] = {}
    for source, rows in rows_by_source(path, ("image", "labels"), sources).items():
        number, row = rows[-1]
        found[source] = frozenset(resolve(labels, name, path, number) for name in row["labels"].split(";")
                                  if name.strip())
    return found


def resolve(labels: Labels, spec: str, path: Path, line: int) -> int:
    """A class named in a CSV file, or a usage error naming the file and line."""
    try:
        return labels.resolve(spec)
    except ExplainError as error:
        raise TruthError(f"{path}, line {line}: {error}") from None


def rows_by_source(path: Path, required: Sequence[str], sources: Sequence[Source]) -> dict[Source, list]:
    """The (line, row) pairs of a CSV whose `image` names each source: as printed, or relative to its folder."""
    by_name: dict[str, list] = {}
    for number, row in read_csv(path, required):
        by_name.setdefault(normal_name(row["image"]), []).append((number, row))
    found = {}
    for source in sources:
        rows = by_name.get(normal_name(source.shown)) or by_name.get(normal_name(source.relative))
        if rows:
            found[source] = rows
    return found


def read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row of a CSV whose header holds `required`; one-line errors."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in header]
            if missing:
                raise TruthError(f"{path}: the header must name {', '.join(required)}; it has {', '.join(header) or 'nothing'}")
            reader.fieldnames = header
            return [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TruthError(f"{path}: cannot read it: {error}") from None


def normal_name(name: str) -> str:
    """A path as a CSV may give it, normalised for comparison."""
    return posixpath.normpath(PurePosixPath(name.replace("\\", "/")).as_posix())
