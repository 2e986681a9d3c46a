"""Rendering with numpy and Pillow alone: normalise, upsample, colour, blend, encode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from explain_cli.render import heatmaps as render


def test_normalise_divides_by_the_peak():
    np.testing.assert_allclose(render.normalise(np.array([[0.0, 2.0], [1.0, 4.0]])), [[0, 0.5], [0.25, 1]])


@pytest.mark.parametrize("flat", [np.zeros((3, 3)), -np.ones((3, 3)), np.full((3, 3), np.nan)])
def test_normalise_leaves_an_empty_map_zero(flat):
    result = render.normalise(flat)
    assert result.dtype == np.float32 and not result.any() and result.shape == (3, 3)


def test_upsample_is_bilinear_between_centres():
    up = render.upsample(np.array([[0.0, 1.0]], np.float32), width=4, height=2)
    assert up.shape == (2, 4)
    # Pixel centres of the 2-wide map sit at x = 1 and x = 3 of the 4-wide one (half-pixel alignment).
    np.testing.assert_allclose(up[0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(up[0], up[1])


def test_shipped_jet_table_is_matplotlibs():
    np.testing.assert_array_equal(render.colormap_table("jet"), render.matplotlib_table("jet"))


def test_colorize_uses_matplotlib_colormap():
    from matplotlib import colormaps

    values = np.array([[0.0, 0.5, 1.0]])
    expected = np.rint(colormaps["jet"](np.array([0, 128, 255]) / 255.0)[:, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(render.colorize(values, "jet")[0], expected)
    assert tuple(render.colorize(values, "viridis")[0, 0]) != tuple(expected[0])


def test_blend_weights_the_heatmap_by_alpha():
    original = np.full((1, 1, 3), 100, np.uint8)
    colored = np.full((1, 1, 3), 200, np.uint8)
    assert render.blend(original, colored, 0.4)[0, 0, 0] == 140
    assert render.blend(original, colored, 0.0)[0, 0, 0] == 100
    assert render.blend(original, colored, 1.0)[0, 0, 0] == 200


def test_overlay_has_the_original_size_and_pixels():
    original = np.full((30, 50, 3), 100, np.uint8)
    heatmap = np.zeros((7, 7), np.float32)
    heatmap[:, 4:] = 1.0  # hot on the right
    out = render.overlay(original, heatmap, "jet", alpha=0.4)
    assert out.shape == (30, 50, 3)
    jet = render.colormap_table("jet").astype(float)
    np.testing.assert_array_equal(out[15, -1], np.rint(60 + 0.4 * jet[255]).astype(np.uint8))
    np.testing.assert_array_equal(out[15, 0], np.rint(60 + 0.4 * jet[0]).astype(np.uint8))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1 / 3, 0.5, 0.6, 0.7, 1.0])
@pytest.mark.parametrize("colormap", ["jet", "gray", "viridis"])
def test_overlay_of_the_brightest_pixels_does_not_wrap_around(alpha, colormap):
    """The overlay adds two rounded bytes; white under the colormap's top colour must stay within 1 of the blend."""
    original = np.array([[[255, 255, 255], [0, 0, 0], [200, 17, 128]]], np.uint8)
    hot = np.ones((2, 2), np.float32)
    exact = render.blend(original, render.colorize(np.ones((1, 3)), colormap), alpha).astype(int)
    assert np.abs(render.overlay(original, hot, colormap, alpha).astype(int) - exact).max() <= 1


def test_one_backdrop_serves_every_overlay_of_an_image():
    rng = np.random.default_rng(2)
    original = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    ready = render.backdrop(original, 0.4)
    for _ in range(3):
        heatmap = render.normalise(rng.random((7, 7)))
        shared = np.asarray(render.overlay_on(ready, heatmap, "jet"))
        np.testing.assert_array_equal(shared, render.overlay(original, heatmap, "jet", 0.4))


@pytest.mark.parametrize("image_format, pil_format", [("jpg", "JPEG"), ("png", "PNG")])
def test_encode(image_format, pil_format):
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(render.encode(image, image_format)))
    assert decoded.format == pil_format and decoded.size == (30, 20)
    if image_format == "png":
        np.testing.assert_array_equal(np.asarray(decoded), image)


def test_fast_overlay_agrees_with_the_float_computation():
    """Pillow's uint8 path stays within one colormap step of upsample → colorize → blend in float."""
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    heatmap = render.normalise(rng.random((7, 7)))
    fast = render.overlay(original, heatmap, "jet", alpha=0.4).astype(int)
    slow = render.blend(original, render.colorize(render.upsample(heatmap, 70, 45), "jet"), 0.4).astype(int)
    assert np.abs(fast - slow).max() <= 4 and np.abs(fast - slow).mean() < 1.0


@pytest.mark.parametrize("width, height", [(640, 427), (427, 640), (1000, 100), (10000, 1), (1, 10000)])
def test_figure_is_mostly_picture_at_any_aspect_ratio(width, height):
    """Landscape, portrait, 10:1 and one-pixel-thin images: white space is margin, captions and title only."""
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # noise: no row of it is white
    heatmap = rng.random((7, 7)).astype(np.float32)
    png = render.figure(original, heatmap, render.overlay(original, heatmap), "tabby (281): p = 0.923, gradcam at "
                        "conv5_block3_out", "jet")
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    white = (picture == 255).all(axis=2)
    blank_rows, blank_columns = white.all(axis=1).mean(), white.all(axis=0).mean()
    stacked = width / height > 2
    assert blank_rows <= (0.2 if stacked else 0.12) and blank_columns <= 0.05, (blank_rows, blank_columns)
    # A thin image is still drawn at a visible size: its short side at least 100 pixels in every panel.
    tallest_run = max(len(run) for run in "".join("x" if r else " " for r in ~white.all(axis=1)).split())
    widest_run = max(len(run) for run in "".join("x" if c else " " for c in ~white.all(axis=0)).split())
    assert min(tallest_run, widest_run) >= 100, (tallest_run, widest_run)
