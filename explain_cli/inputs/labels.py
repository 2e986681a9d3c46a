"""Class names: the shipped ImageNet index, a user's labels file, and `--class` lookups."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from explain_cli.errors import ExplainError


@dataclass(frozen=True)
class Labels:
    """Names for a model's output units, index i naming unit i."""

    names: tuple[str, ...]
    ids: tuple[str, ...] = ()  # WordNet ids for ImageNet, accepted by `--class` too

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else str(index)

    def resolve(self, spec: str) -> int:
        """The class number that `spec` means: a number, a label name or a WordNet id."""
        text = spec.strip()
        if text.isdigit():
            index = int(text)
            if index >= len(self.names):
                raise ExplainError(
                    f"class {index} is out of range: the model has {len(self.names)} classes (0-{len(self.names) - 1})"
                )
            return index
        if text in self.ids:
            return self.ids.index(text)
        wanted = _normal(text)
        hits = [i for i, name in enumerate(self.names) if _normal(name) == wanted]
        if len(hits) == 1:
            return hits[0]
        if hits:
            options = ", ".join(
                f"{i}" + (f" ({self.ids[i]})" if self.ids else "") for i in hits
            )
            raise ExplainError(f"class name {spec!r} is ambiguous: it names classes {options}; pass the number")
        close = difflib.get_close_matches(wanted, [_normal(n) for n in self.names], n=5, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ExplainError(f"unknown class {spec!r}{hint}")


def _normal(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def imagenet() -> Labels:
    """The 1000 ImageNet classes as Keras numbers them, from the copy inside the package."""
    text = resources.files("explain_cli").joinpath("data/imagenet_class_index.json").read_text("utf-8")
    index = json.loads(text)
    entries = [index[str(i)] for i in range(len(index))]
    return Labels(names=tuple(e[1] for e in entries), ids=tuple(e[0] for e in entries))


def numbered(count: int) -> Labels:
    return Labels(names=tuple(str(i) for i in range(count)))


def from_file(path: Path) -> Labels:
    """One class name a line; blank lines at the end are ignored."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ExplainError(f"{path}: cannot read labels file: {error}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return Labels(names=tuple(line.strip() for line in lines))


def for_model(num_classes: int, given: Path | str | Sequence[str] | None,
              default: Sequence[str] | None = None) -> Labels:
    """The labels a run uses: the user's file (or list of names), else `default`, else ImageNet's for 1000 outputs,
    else numbers."""
    if given is not None:
        labels = from_file(Path(given)) if isinstance(given, (str, Path)) else Labels(tuple(str(n) for n in given))
        if len(labels) != num_classes:
            where = given if isinstance(given, (str, Path)) else "labels"
            raise ExplainError(f"{where}: has {len(labels)} labels but the model has {num_classes} outputs")
        return labels
    if default is not None:
        return Labels(names=tuple(default))
    if num_classes == 1000:
        return imagenet()
    return numbered(num_classes)
