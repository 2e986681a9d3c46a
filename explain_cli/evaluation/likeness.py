"""evaluate on a likeness: each method's maps of an image's likeness to its references, cos(e(x), r), measured by
deletion and insertion (and Average Drop, Increase in Confidence) of that cosine, as a class's probability is."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from explain_cli.evaluation import evaluate as evaluation
from explain_cli.inputs.sources import Source
from explain_cli.render import heatmaps as render
from explain_cli.steps.likeness import cosines, image_cosines


def evaluation_step(embed: Callable[[np.ndarray], np.ndarray], embed_pixels: Callable[[np.ndarray], np.ndarray],
                    explainers: Mapping[str, Callable[..., Any]], references: Callable[[list[Source]], np.ndarray],
                    settings: evaluation.Settings) -> Callable[[np.ndarray, list[Source]], evaluation.EvaluationBatch]:
    """A pipeline compute step: every method's maps of each image's likeness to its k references (b, k, D), then
    their faithfulness. `embed`: a batch -> (b, D); `embed_pixels`: float pixels (perturbed) -> (n, D); each
    explainer: (batch, references=(b, k, D)) -> BatchResult."""

    def compute(images: np.ndarray, sources: list[Source]) -> evaluation.EvaluationBatch:
        given = references(sources)
        likeness = image_cosines(embed(images), given)  # (b, k)
        b, k = likeness.shape
        height, width = images.shape[1:3]
        rows = np.broadcast_to(np.arange(k, dtype=np.int32), (b, k))
        maps = {method: evaluation.random_maps(settings.seed, sources, rows, height, width)
                if method == evaluation.RANDOM else
                np.stack([[render.normalise(m) for m in row] for row in explainers[method](images, references=given).maps])
                for method in settings.methods}
        batch = evaluation.EvaluationBatch(likeness, rows, maps)
        for i in range(b):

            def forward(perturbed: np.ndarray, refs: np.ndarray = given[i]) -> np.ndarray:
                return cosines(embed_pixels(perturbed), refs)

            evaluation.measure(batch, images, i, forward, likeness[i], settings)
        return batch

    return compute
