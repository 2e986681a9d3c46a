"""A likeness target in the steps: the model's own output as an embedding, and its cosine to reference vectors.

The gradient and pixel methods read likeness rows inside their compiled steps (steps/rows.similarity_rows); the
perturbation methods, which need no layer, score each perturbed image's embedding against its image's references
here, through the one forward step.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from explain_cli.inputs import held
from explain_cli.methods import PERTURBATION_METHODS
from explain_cli.methods.perturbation import GREY, PerturbationInputs, RiseMasks
from explain_cli.steps.compiled import BatchResult, forward_step
from explain_cli.steps.perturbing import window_and_stride


def compile_embedding(model: Any, graph: Any, pixels: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A batch of pixels (uint8, or "float32": perturbed images) -> (b, D) the model's own output, flattened."""
    from explain_cli.model import heads

    step = forward_step(model, graph, pixels or model.pixels, heads.embedding)
    return lambda batch: step(batch).numpy()


def cosines(embeddings: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(n, D) embeddings and (k, D) references -> (n, k) cos(e, r) = e·r / (‖e‖ ‖r‖), a zero vector's 0."""
    e = np.asarray(embeddings, np.float64).reshape(len(embeddings), -1)
    r = np.asarray(references, np.float64).reshape(len(references), -1)
    unit_e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    unit_r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    found: np.ndarray = (unit_e @ unit_r.T).astype(np.float32)
    return found


def image_cosines(embeddings: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(b, D) embeddings and each image's own references (b, k, D) -> (b, k) cosines, image by image."""
    return np.stack([cosines(e[None], refs)[0] for e, refs in zip(embeddings, references)])


def perturbation_step(method: str, embed: Callable[[np.ndarray], np.ndarray], settings: Any, masks: RiseMasks,
                      height: int, width: int, fill: float = GREY) -> Callable[..., BatchResult]:
    """(a batch, each image's k references (b, k, D)) -> BatchResult of a perturbation method explaining each image's
    likeness to each reference: s_j(x) = cos(embed(x), r_j) in place of a class's probability. `embed`: float pixels
    -> (n, D)."""
    compute = PERTURBATION_METHODS[method]
    window, stride = window_and_stride(settings, height, width)

    def run(batch: np.ndarray, references: np.ndarray | None = None, **_: Any) -> BatchResult:
        assert references is not None, "a likeness step is given each image's references"
        images = batch.astype(np.float32)
        likeness = image_cosines(embed(images), references)
        k = references.shape[1]
        rows = np.arange(k, dtype=np.int32)
        maps = []
        for i, (image, refs) in enumerate(zip(images, references)):

            def forward(perturbed: np.ndarray, refs: np.ndarray = refs) -> np.ndarray:
                return cosines(embed(perturbed), refs)

            with held.row(i):
                maps.append(compute(PerturbationInputs(forward, image, rows, settings.batch_size, masks, window, stride,
                                                       fill)))
        return BatchResult(likeness, np.broadcast_to(rows, (len(batch), k)).copy(), likeness, np.stack(maps))

    return run
