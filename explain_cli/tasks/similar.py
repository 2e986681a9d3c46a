"""Why two images are alike: a likeness target for embedding models (face verification, retrieval, metric learning).

A model whose output is a vector per image is explained by the cosine of its output to a reference vector held
fixed, cos(e(x), r) = e·r / (‖e‖ ‖r‖): another image's embedding (`explain similar A B`: A's map for its likeness to
e(B), and B's the other way round) or vectors given (a class prototype, a text embedding made elsewhere). Every
gradient, pixel and perturbation method takes it, one row per (image, reference), as it takes a class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

from explain_cli.errors import BadArgument
from explain_cli.inputs.sources import Source, key_of
from explain_cli.io import files as output
from explain_cli.io.files import Prediction
from explain_cli.model.files import RuntimeModel
from explain_cli.results import Explanation, Similarity
from explain_cli.running.pipeline import Finish, ImageResult, RenderOptions, manifest_record, write_explanation
from explain_cli.running.values import explained
from explain_cli.render import heatmaps as render


@dataclass(frozen=True)
class References:
    """What each image is compared with: `count` vectors per image, (b, count, D) for a batch's sources, and their
    names (what stdout, the manifest and file names call them)."""

    count: int
    of: Callable[[list[Source]], np.ndarray]
    names: Callable[[Source], tuple[str, ...]]
    titles: tuple[str, ...] = ()  # the names, where they are the same for every image


def references(given: Any, size: int | None, names: Sequence[str] | None = None,
               option: str = "similar_to") -> References:
    """References from a vector (D,) or vectors (k, D) every image is compared with, or a mapping from each image's
    key (its path as given, its index in memory) to its own vector or vectors; `size`: the model's output's length
    (None: not known before it runs); `names`: the vectors' names (default "reference j")."""
    if isinstance(given, Mapping):
        own = {key_of(k): _vectors(v, size, option) for k, v in given.items()}
        counts = {len(v) for v in own.values()}
        if len(counts) != 1:
            raise BadArgument(option, "give every image the same number of reference vectors" if own else
                              "no reference vectors given")
        count = counts.pop()
        titles = _titles(names, count, option)

        def of(sources: list[Source]) -> np.ndarray:
            missing = [s.key for s in sources if s.key not in own]
            if missing:
                raise BadArgument(option, f"no reference vector was given for the image {missing[0]!r}")
            return np.stack([own[s.key] for s in sources])

        return References(count, of, lambda source: titles, titles)
    vectors = _vectors(given, size, option)
    titles = _titles(names, len(vectors), option)
    return References(len(vectors), lambda sources: np.broadcast_to(vectors, (len(sources), *vectors.shape)),
                      lambda source: titles, titles)


def pair(keys: Sequence[Hashable], names: Sequence[str], embedded: np.ndarray) -> References:
    """Two images compared with each other: the first (by its key) with the second's embedding, named after it, and
    the second with the first's."""
    other = {key_of(keys[0]): (embedded[1], names[1]), key_of(keys[1]): (embedded[0], names[0])}
    return References(1, lambda sources: np.stack([other[s.key][0][None] for s in sources]),
                      lambda source: (other[source.key][1],))


def _titles(names: Sequence[str] | None, count: int, option: str) -> tuple[str, ...]:
    """The references' names: those given (one per vector), else "reference j"."""
    if names is None:
        return tuple(f"reference {j}" for j in range(count))
    if len(names) != count:
        raise BadArgument(option, f"{len(names)} names for {count} reference vectors")
    return tuple(names)


def _vectors(given: Any, size: int | None, option: str) -> np.ndarray:
    """A vector (D,) or vectors (k, D) as (k, D) float32; BadArgument for any other shape or a length other than the
    model's output's."""
    vectors = np.asarray(given, np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or not vectors.size:
        raise BadArgument(option, f"reference vectors are (D,) or (k, D), not {np.shape(given)}")
    if size is not None and vectors.shape[1] != size:
        raise BadArgument(option, f"reference vectors of {vectors.shape[1]} values; the model's output has {size}")
    if not np.isfinite(vectors).all():
        raise BadArgument(option, "the reference vectors hold NaN or infinite values")
    return vectors


def read_vectors(path: Path) -> np.ndarray:
    """--to FILE: vectors as .npy (D,) or (k, D), or text (one vector a line, numbers split by commas or spaces)."""
    if not path.is_file():
        raise BadArgument("--to", f"{path}: no such file")
    try:
        if path.suffix.lower() == ".npy":
            return np.asarray(np.load(path, allow_pickle=False), np.float32)
        return np.atleast_2d(np.loadtxt(path, delimiter="," if "," in path.read_text()[:4096] else None,
                                        dtype=np.float32, ndmin=2))
    except (ValueError, OSError) as error:
        raise BadArgument("--to", f"{path}: not vectors: {error}") from None


def references_in(path: Path, size: int | None, given: np.ndarray | None = None) -> References:
    """--to FILE: its vectors (read_vectors, unless `given` already), named FILE, or FILE#j for each of several."""
    given = read_vectors(path) if given is None else given
    names = [path.name] if given.ndim == 1 else [f"{path.name}#{j}" for j in range(len(given))]
    return references(given, size, names, option="--to")


@dataclass(frozen=True)
class Likeness(Prediction):
    """An image's likeness to a reference: `probability` holds the cosine, `label` the reference's name."""

    def row(self) -> dict[str, Any]:
        return {"reference": self.label, "reference_index": self.class_index, "similarity": self.probability}

    def tsv(self, image: str) -> str:
        return f"{image}\t{output.tsv_field(self.label)}\t{self.probability:.6f}\n"

    def line(self) -> str:
        return f"  similar to {self.label}: cosine {self.probability:.4f}\n"


def values(refs: References, layer: str | None, method: str, canvas: Any) -> Finish:
    """The library's finish step: each image's likeness maps as Explanations, nothing written."""

    def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> ImageResult:
        return ImageResult(source, values=explained(source, original, row, batch, refs.names(source), layer, method,
                                                    head="similarity", canvas=canvas))

    return finish


def written(refs: References, options: RenderOptions) -> Finish:
    """The command line's finish step: each image's overlay per reference, a manifest line each, its likenesses on
    stdout."""

    def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> ImageResult:
        names = refs.names(source)
        files = output.FileSet(options.out_dir)
        done, warnings = [], []
        ready = render.backdrop(original, options.alpha)
        with files.complete_or_removed():
            for value in explained(source, original, row, batch, names, options.layer, options.method,
                                   head="similarity", canvas=options.canvas):
                heatmap = render.normalise(value.map)
                if not heatmap.any():
                    warnings.append(f"warning: {source.shown}: the {options.method} map for its likeness to "
                                    f"{value.label} is all zero")
                done.append(write_explanation(source, files, value, heatmap, ready, options))
        records = [{**manifest_record(w, options.model), "target": "similarity", "reference": w.label,
                    "similarity": w.probability, "source": str(source.path.absolute())} for w in done]
        shown: list[Prediction] = [Likeness(w.rank, w.class_index, w.label, w.probability) for w in done]
        return ImageResult(source, predictions=shown, explanations=done, warnings=warnings, records=records)

    return finish


class Likening:
    """The Explainer's likeness targets: `embed`, `similar`, and `explain(images, similar_to=...)`. It gives `_run`,
    `_step`, `compute`, `_loaded`, `_graph`, `_model`, `method`, `canvas`, `layer_for`, `_needs_head`, `settings`,
    `input_size` and `_fill`."""

    _run: Callable[..., Any]
    _step: Callable[..., Any]
    _model: Any
    _graph: Any
    compute: Callable[..., Any]
    layer_for: Callable[[str], str | None]
    _needs_head: Callable[[], Any]
    canvas: Any
    name: str
    settings: Any
    input_size: tuple[int, int, int]
    _fill: float

    @property
    def method(self) -> str:
        raise NotImplementedError

    def embed(self, images: Any, errors: str = "raise") -> np.ndarray:
        """(n, D): each image's embedding, the model's own output flattened, in input order (an image skipped with
        errors="skip" left out)."""
        self.check_embedder()

        def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> ImageResult:
            return ImageResult(source, values=[np.array(batch[row])])

        found = [r.values[0] for r in self._run(images, lambda made: made._embedding_step(), finish, errors)]
        return np.stack(found) if found else np.zeros((0, self.embedding_size or 0), np.float32)

    def similar(self, a: Any, b: Any) -> Similarity:
        """Why `a` and `b` are alike: a's map for cos(e(a), e(b)) with e(b) held fixed, b's the other way round, and
        the cosine. Each is one image in any form explain takes (a path, an array, a PIL image)."""
        from explain_cli.inputs.sources import sources_of

        keys = [s.key for s in sources_of([a, b])]
        if len(keys) != 2:
            raise BadArgument(None, "similar compares two images: give one image as a and one as b, not folders")
        refs = pair(keys, [_name(a, "a"), _name(b, "b")], self.embed([a, b]))
        first, second = self._iter_likeness([a, b], refs, "raise")
        return Similarity(float(first.probability), first, second)

    def _iter_likeness(self, images: Any, similar_to: Any, errors: str,
                       names: Sequence[str] | None = None) -> Iterator[Explanation]:
        self.check_embedder()
        refs = similar_to if isinstance(similar_to, References) else references(similar_to, self.embedding_size, names)
        finish = values(refs, self.layer_for(self.method), self.method, self.canvas)
        for result in self._run(images, lambda made: made.compute(None, references=refs), finish, errors):
            yield from result.values

    @property
    def embedding_size(self) -> int | None:
        """How many values the model's output holds per image (its embedding's length); None where not fixed."""
        shape = self._needs_head().shape
        return int(np.prod(shape)) if shape and all(d for d in shape) else None

    def check_embedder(self) -> None:
        """BadArgument for a model whose output explain cannot take as an embedding: a runtime's file, for now."""
        if isinstance(self._model, RuntimeModel):
            raise BadArgument("--model", f"{self.name}: a likeness is explained on a Keras model (.keras, .h5, a model "
                              "in memory); a model file only a runtime runs gives no embedding yet")

    def _embedding_step(self, pixels: str | None = None) -> Callable[..., np.ndarray]:
        """A compute step: a batch (and its sources, unread) -> (b, D) its embeddings (pixels "float32": perturbed
        images), compiled once."""
        from explain_cli.steps import likeness

        step = self._step(("embedding", pixels), lambda: likeness.compile_embedding(self._loaded, self._graph, pixels))

        def embedded(batch: np.ndarray, sources: Any = None) -> np.ndarray:
            return np.asarray(step(batch))

        return embedded

    def _likeness_perturbation(self, method: str) -> Any:
        """A perturbation method's step for a likeness: each perturbed image's embedding against its references."""
        from explain_cli.steps import likeness, perturbing

        height, width, _ = self.input_size
        masks = self._step(("rise masks",), lambda: perturbing.masks_for(self.settings, *self.input_shape[:-1]))
        embed = self._embedding_step("float32")
        return likeness.perturbation_step(method, embed, self.settings, masks, height, width, self._fill)

    @property
    def _loaded(self) -> Any:
        raise NotImplementedError


def _name(image: Any, fallback: str) -> str:
    """What a compared image is called: its file's name, or `fallback` for an image in memory."""
    return Path(image).name if isinstance(image, (str, Path)) else fallback
