"""A model that knows something: its Grad-CAM points at the object it classifies."""

from __future__ import annotations

import numpy as np

from explain_cli.steps import compiled as explainer
from explain_cli.model import loading as models
from explain_cli.render import heatmaps as render
from explain_cli.model import cut as split
from tests.synthetic import SHAPE_CLASSES, make_scene


def test_tiny_model_learned_the_task_and_gradcam_peaks_inside_the_square(tiny_model, tiny_labels):
    model = models.load(str(tiny_model), labels_file=tiny_labels)
    graph = explainer.graph_of(model)
    cut = split.split(graph, explainer.default_layer(graph, model))
    step = explainer.compile_explain(model, cut, "gradcam")

    rng = np.random.default_rng(2024)  # scenes the model never saw
    scenes = [make_scene(rng) for _ in range(40)]
    result = step(np.stack([s.image for s in scenes]))

    predicted = result.classes[:, 0]
    accuracy = np.mean(predicted == [s.label for s in scenes])
    assert accuracy >= 0.9, f"the tiny model did not learn the colours: accuracy {accuracy:.2f}"

    inside = 0
    for scene, heatmap in zip(scenes, result.maps[:, 0]):
        full = render.upsample(render.normalise(heatmap), scene.image.shape[1], scene.image.shape[0])
        row, col = np.unravel_index(np.argmax(full), full.shape)
        top, left, bottom, right = scene.box
        inside += top <= row < bottom and left <= col < right
    assert inside / len(scenes) >= 0.8, f"Grad-CAM peak inside the square for only {inside}/{len(scenes)} images"
    assert model.labels.names == SHAPE_CLASSES
