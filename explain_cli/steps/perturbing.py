"""The steps of the methods that need no layer. A perturbation method (methods/perturbation.py): the predictions of a
batch pick its classes, then each image's perturbed copies go through the one forward step in full batches, every
explained class of the image read from the same passes. The random control: seeded noise. Whatever runs the model
(Keras, a SavedModel, LiteRT, ONNX Runtime) is behind `predict` and `forward`."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from explain_cli.inputs import held
from explain_cli.inputs.fitting import at_output
from explain_cli.steps import targets
from explain_cli.errors import BadArgument
from explain_cli.steps.compiled import BatchResult
from explain_cli.methods import PERTURBATION_METHODS
from explain_cli.methods.perturbation import GREY, PerturbationInputs, RiseMasks, default_window, rise_masks


def masks_for(settings: Any, *sides: int) -> RiseMasks:
    """RISE's masks for a run at the input's (height, width) or (depth, height, width): drawn once from the settings'
    seed, the same for every image."""
    if settings.masks < 1 or settings.cells < 1 or not 0.0 < settings.keep <= 1.0:
        raise BadArgument("--masks", f"rise needs masks ≥ 1, cells ≥ 1 and 0 < keep ≤ 1, not {settings.masks}, "
                          f"{settings.cells}, {settings.keep}")
    return rise_masks(settings.masks, settings.cells, settings.keep, settings.seed, *sides[-2:],
                      depth=sides[0] if len(sides) == 3 else None)


def window_and_stride(settings: Any, *sides: int) -> tuple[Any, Any]:
    """Occlusion's window and stride over the input's (height, width): as given, else a seventh of its shorter side and
    half of that. A volume's or a clip's (depth, height, width) adds its own along the depth: a seventh of it."""
    height, width = sides[-2:]
    window = settings.window or default_window(height, width)
    stride = settings.stride or max(1, window // 2)
    if window < 1 or stride < 1:
        raise BadArgument("--window", f"occlusion needs a window and a stride of 1 pixel or more, not {window}, {stride}")
    if len(sides) == 2:
        return window, stride
    along = max(1, round(sides[0] / 7))
    return (along, window, window), (max(1, along // 2), stride, stride)


def describe(method: str, settings: Any, *sides: int) -> str:
    """How a run's perturbation method perturbs, for its first line on stderr."""
    if method == "rise":
        cells = " × ".join([str(settings.cells)] * len(sides))
        return (f"{settings.masks} masks of {cells} cells kept with probability "
                f"{settings.keep:g} (seed {settings.seed}), forward passes only")
    window, stride = window_and_stride(settings, *sides)
    if len(sides) == 3:
        return (f"a grey window of {window[0]} × {window[1]} × {window[2]} every {stride[0]} × {stride[1]} × "
                f"{stride[2]}, forward passes only")
    return f"a {window}-pixel grey window every {stride} pixels, forward passes only"


def step(method: str, predict: Callable[[np.ndarray], np.ndarray], forward: Callable[[np.ndarray], np.ndarray],
         choice: targets.ClassChoice, settings: Any, masks: RiseMasks, fill: float = GREY) -> Callable[..., BatchResult]:
    """uint8 batch (and each image's own class (b,), for a per-image choice) -> BatchResult: the maps at the input's
    resolution (the masks'); the scores are the classes' probabilities. `fill`: what is hidden becomes (0 for an input as
    it stands)."""
    compute = PERTURBATION_METHODS[method]
    window, stride = window_and_stride(settings, *masks.sides)

    def run(batch: np.ndarray, classes: np.ndarray | None = None, regions: np.ndarray | None = None) -> BatchResult:
        probabilities = predict(batch)
        chosen = classes[:, None].astype(np.int32) if classes is not None else \
            np.asarray(targets.pick(choice, probabilities, [None] * len(batch)))
        maps = []
        for i, (image, row) in enumerate(zip(batch, chosen)):
            with held.row(i):  # a model of several inputs: the image's own values for the others
                maps.append(compute(PerturbationInputs(forward, image.astype(np.float32), row, settings.batch_size,
                                                       masks, window, stride, fill)))
        return BatchResult(probabilities, chosen, np.take_along_axis(probabilities, chosen, axis=1), np.stack(maps))

    return run


def segment_step(method: str, pixels: Callable[[np.ndarray], np.ndarray], head: Any, choice: targets.ClassChoice,
                 settings: Any, masks: RiseMasks, height: int, width: int,
                 fill: float = GREY) -> Callable[..., BatchResult]:
    """A perturbation method on a segmentation: a class of an image is explained by its mean probability over its
    region (where the unperturbed image predicts it, or the region given), s_c(x) = Σ_R p_c(x) / |R|, the score evaluate
    measures. `pixels`: float pixels -> (n, h, w, classes) each pixel's probabilities."""
    from explain_cli.model import heads

    compute = PERTURBATION_METHODS[method]
    window, stride = window_and_stride(settings, height, width)

    def run(batch: np.ndarray, classes: np.ndarray | None = None, regions: np.ndarray | None = None,
            inside: np.ndarray | None = None) -> BatchResult:
        probabilities = pixels(batch.astype(np.float32))  # (b, h, w, C)
        size = probabilities.shape[1:3]
        # A letterbox's grey is not the picture: shares and regions are read where the picture lies (`inside`).
        weights = at_output(inside, size) if inside is not None else np.ones((len(batch), *size), np.float32)
        counted = np.maximum(weights.sum(axis=(1, 2)), 1.0)[:, None]  # the pictures' own pixels
        where = heads.numpy_masks(head, probabilities) * weights[..., None]
        shares = where.sum(axis=(1, 2)) / counted
        chosen = classes[:, None].astype(np.int32) if classes is not None else \
            np.asarray(targets.pick(choice, shares, [None] * len(batch)))
        if regions is not None:  # the region given, the same for each class of its image, at the output's resolution
            where = np.repeat((at_output(regions, size) > 0.5)[..., None], where.shape[-1], axis=-1).astype(np.float32)
        mean = heads.numpy_region_means(probabilities, where)
        maps = []
        for i, (image, row, region) in enumerate(zip(batch, chosen, where)):

            def forward(perturbed: np.ndarray, region: np.ndarray = region) -> np.ndarray:
                return heads.numpy_region_means(pixels(perturbed), region[None])  # type: ignore[no-any-return]

            with held.row(i):
                maps.append(compute(PerturbationInputs(forward, image.astype(np.float32), row, settings.batch_size,
                                                       masks, window, stride, fill)))
        explained_share = np.take_along_axis(where.sum(axis=(1, 2)) / counted, chosen, axis=1)
        explained_mean = np.take_along_axis(mean, chosen, axis=1)
        extras = {"share": explained_share, "mean_probability": explained_mean,
                  "segmentation": heads.numpy_classes(head, probabilities)}
        return BatchResult(shares, chosen, explained_mean, np.stack(maps), extras)

    return run


def random_step(predict: Callable[[np.ndarray], np.ndarray], choice: targets.ClassChoice,
                seed: int) -> Callable[[np.ndarray, list[Any]], BatchResult]:
    """The random control's compute step: seeded uniform noise at the input's resolution, as evaluate draws it."""
    from explain_cli.methods.control import random_map

    def compute(batch: np.ndarray, sources: list[Any]) -> BatchResult:
        probabilities = predict(batch)
        chosen = targets.pick(choice, probabilities, [s.key for s in sources])
        maps = np.stack([[random_map(seed, s.shown, int(c), *batch.shape[1:-1]) for c in row]
                         for s, row in zip(sources, chosen)])
        return BatchResult(probabilities, chosen, np.take_along_axis(probabilities, chosen, axis=1), maps)

    return compute
