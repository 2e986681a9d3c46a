"""What is explained of each image: which classes.

A `ClassChoice` is resolved once from what the user said (class numbers, label names or WordNet ids, a top k, or each
image's own class) and decides which compiled step explains it: the same classes for every image, each image's top
k, or a class given per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence, Union

from explain_cli.errors import BadArgument, ExplainError, whole
from explain_cli.inputs.labels import Labels

ClassSpec = Union[int, str]


@dataclass(frozen=True)
class ClassChoice:
    """The classes explained: `classes` for every image, else each image's `top_k` most probable; with
    `per_image`, each image's own class, looked up by its key (a path as shown, or an index)."""

    classes: tuple[int, ...] = ()
    top_k: int = 1
    per_image: Mapping[Hashable, int] | None = field(default=None, compare=False, hash=False)
    floor: float | None = None  # of the top k, only those showing at least this: a label's probability (several
    # labels per image), a class's share of the pixels (a segmentation)

    @property
    def k(self) -> int:
        """Classes explained per image."""
        return 1 if self.per_image is not None else len(self.classes) or self.top_k

    @property
    def key(self) -> tuple[object, ...]:
        """What the compiled step depends on: the classes fixed in it, the k, or a class given per image."""
        return ("per_image",) if self.per_image is not None else (self.classes, self.k)


def resolve_class(labels: Labels, spec: ClassSpec) -> int:
    """A class number from a number, a label name or a WordNet id; BadArgument (--class) naming the problem."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise BadArgument("--class", f"a class is a number or a label name, not {spec!r}")
    try:
        return labels.resolve(str(spec))
    except ExplainError as error:
        raise BadArgument("--class", str(error)) from None


def choose(labels: Labels, classes: ClassSpec | Sequence[ClassSpec] | Mapping[Any, ClassSpec] | None = None,
           top_k: int | None = None, key: Callable[[Any], Hashable] = lambda k: k, kind: str = "classes",
           floor: float | None = None) -> ClassChoice:
    """The choice that `classes` and `top_k` make: None (the top 1, or the top k), a class or a list of them (the
    same for every image), or a mapping from each image's key to its class (`key` normalises the mapping's keys).
    For a head of several labels (`kind` "labels") or a segmentation ("pixels"), None means every class showing at
    least `floor` (a probability, a share of the pixels), most first, up to `top_k`."""
    if top_k is not None:
        whole("--top-k", "top_k", top_k, 1)
    if classes is not None and top_k:
        raise BadArgument(None, "--class and --top-k are exclusive: explain named classes or the top N")
    if top_k is not None and top_k > len(labels):
        raise BadArgument("--top-k", f"{top_k} is more than the model's {len(labels)} classes")
    if top_k is not None and top_k < 1:
        raise BadArgument("--top-k", f"{top_k} is not a number of classes")
    if isinstance(classes, Mapping):
        return ClassChoice(per_image={key(k): resolve_class(labels, v) for k, v in classes.items()})
    if classes is None and kind in ("labels", "pixels"):
        return ClassChoice(top_k=min(top_k or len(labels), len(labels)), floor=floor)
    if classes is None:
        return ClassChoice(top_k=top_k or 1)
    # a class, or several; one of any other type (a float) is refused by resolve_class
    specs: list[Any] = list(classes) if isinstance(classes, Iterable) and not isinstance(classes, (str, bytes)) \
        else [classes]
    return ClassChoice(classes=tuple(dict.fromkeys(resolve_class(labels, spec) for spec in specs)))


def pick(choice: ClassChoice, probabilities: Any, keys: Sequence[Hashable]) -> Any:
    """The (b, k) classes `choice` explains for a batch: each image's own (by its key), the fixed ones, or the top k
    by probability (ties to the lower class number)."""
    import numpy as np

    if choice.per_image is not None:
        return np.array([[own_class(choice, key)] for key in keys], np.int32)
    if choice.classes:
        return np.broadcast_to(np.array(choice.classes, np.int32), (len(probabilities), len(choice.classes)))
    return np.argsort(-np.asarray(probabilities), axis=1, kind="stable")[:, :choice.k].astype(np.int32)


def own_class(choice: ClassChoice, key: Hashable) -> int:
    """An image's own class under a per-image choice; BadArgument where none was given for it."""
    assert choice.per_image is not None
    try:
        return choice.per_image[key]
    except KeyError:
        raise BadArgument("--class", f"no class was given for the image {key!r}") from None
