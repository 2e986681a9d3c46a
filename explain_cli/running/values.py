"""Each image's row of a batch result as the library's values: an Explanation per explained class, its map cut back
to the picture's part of the input where the picture was letterboxed."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from explain_cli.inputs import sources as inputs
from explain_cli.inputs.sources import Source
from explain_cli.io import files as output
from explain_cli.results import TARGET_KINDS, Explanation, frozen_array


def fitted(array: np.ndarray, canvas: inputs.Canvas | None, source: Source, original: np.ndarray,
           nearest: bool = False) -> np.ndarray:
    """A map (or a class map) over the model's input, cut to the picture's part of a letterbox; as it is otherwise,
    and for an array given as the model's input."""
    if canvas is None or source.as_input or source.grid is not None:
        return array
    return canvas.content(array, original.shape[:2], nearest)


def explained(source: Source, original: np.ndarray, row: int, batch: Any, names: Sequence[str], layer: str | None,
              method: str, floor: float | None = None, head: str = "classes",
              canvas: inputs.Canvas | None = None, input_name: str | None = None) -> list[Explanation]:
    """The values of one image's row of a batch result: each explained class with its raw map and the image; with
    `floor`, only the classes showing at least that much (a label's probability, a share of the pixels). `head`: the
    kind of the model's head, which says what a map explains (results.TARGET_KINDS)."""
    probabilities = batch.probabilities[row]
    extras = getattr(batch, "extras", None) or {}
    image = frozen_array(original)
    found = []
    for j, (class_index, score, raw) in enumerate(zip(batch.classes[row], batch.scores[row], batch.maps[row])):
        class_index = int(class_index)
        if floor is not None and probabilities[class_index] < floor:
            continue
        found.append(Explanation(
            source=source.key, class_index=class_index, label=output.label_of(names, class_index),
            rank=int(np.sum(probabilities > probabilities[class_index])) + 1,
            probability=float(probabilities[class_index]), target_score=float(score), layer=layer, method=method,
            map=frozen_array(fitted(np.asarray(raw, np.float32), canvas, source, original)), image=image,
            share=float(extras["share"][row, j]) if "share" in extras else None,
            mean_probability=float(extras["mean_probability"][row, j]) if "mean_probability" in extras else None,
            target_kind=TARGET_KINDS[head], input=input_name, grid=source.grid,
            attributions={name.split(":", 1)[1]: frozen_array(np.asarray(value[row, j], np.float32))
                          for name, value in extras.items() if name.startswith("attribution:")} or None))
    return found
