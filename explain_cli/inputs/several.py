"""The examples of a model of several inputs: rows giving every input its item, from a CSV (one column per input,
named by the input's name) or from Python (a mapping from input name to a batch, or rows of such mappings).

Each row becomes the Source of its explained input (a picture: a path or an array) carrying its items for the others
(inputs/held.py): an image path, a .npy path, or numbers (in one cell, split by spaces, commas or semicolons).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

from explain_cli.errors import BadArgument
from explain_cli.inputs.held import Held, HeldInput
from explain_cli.inputs.sources import Source, file_source, memory_source


def is_rows(given: Any) -> bool:
    """Whether `given` is examples of several inputs: a mapping of inputs, or a list of such mappings."""
    if isinstance(given, Mapping):
        return True
    return isinstance(given, (list, tuple)) and bool(given) and all(isinstance(row, Mapping) for row in given)


def examples(given: Any, explained: str, held: Sequence[HeldInput], option: str = "images") -> list[Source]:
    """The Sources of examples given in Python: {input name: a batch or a list} or [{input name: item}, ...]."""
    names = [explained, *(h.name for h in held)]
    if isinstance(given, Mapping):
        missing = [name for name in names if name not in given]
        if missing:
            raise BadArgument(option, f"no values for the input {missing[0]}; the model's inputs: {', '.join(names)}")
        counts = {name: len(given[name]) for name in names}
        if len(set(counts.values())) != 1:
            raise BadArgument(option, "every input needs one item per example: " +
                              ", ".join(f"{name} has {count}" for name, count in counts.items()))
        rows = [{name: given[name][i] for name in names} for i in range(counts[explained])]
    else:
        rows = list(given)
    return [_example(row, i, explained, held, None, option) for i, row in enumerate(rows)]


def from_csv(path: Path, explained: str, held: Sequence[HeldInput]) -> list[Source]:
    """The examples of a CSV whose header names the model's inputs; a relative path in a cell is read from the CSV's
    folder. BadArgument (--inputs) for a file that is not such a table."""
    if not path.is_file():
        raise BadArgument("--inputs", f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as table:
        reader = csv.DictReader(table)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in (explained, *(h.name for h in held)) if name not in columns]
        if missing:
            raise BadArgument("--inputs", f"{path}: no column for the input {missing[0]}: its header names the model's "
                              f"inputs, {', '.join([explained, *(h.name for h in held)])}")
        rows = [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]
    if not rows:
        raise BadArgument("--inputs", f"{path}: no rows")
    return [_example(row, i, explained, held, path.parent, "--inputs") for i, row in enumerate(rows)]


def _example(row: Mapping[str, Any], i: int, explained: str, held: Sequence[HeldInput], folder: Path | None,
             option: str) -> Source:
    missing = [name for name in (explained, *(h.name for h in held)) if name not in row]
    if missing:
        raise BadArgument(option, f"example {i}: no value for the input {missing[0]}")
    item = row[explained]
    if isinstance(item, (str, Path)):
        source = file_source(_from(folder, str(item)))
        if folder is not None:  # a table's rows may show one picture with other values: each its own files
            source = dataclasses.replace(source, stem=PurePosixPath(f"{source.stem.as_posix()}.row{i}"))
    else:
        source = memory_source(item, i)
    items = tuple(_from(folder, row[h.name]) if folder is not None and (h.image or _is_array_file(row[h.name]))
                  else row[h.name] for h in held)
    return dataclasses.replace(source, held=Held(tuple(held), items))


def _is_array_file(item: Any) -> bool:
    return isinstance(item, str) and item.lower().endswith(".npy")


def _from(folder: Path | None, cell: str) -> str:
    """A path from a cell: as written where absolute or without a folder, else under the CSV's folder."""
    if folder is None or Path(cell).is_absolute():
        return cell
    return str(folder / cell)
