"""Finding inputs and decoding them: folders, stdin, names, EXIF, modes, bad files."""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from explain_cli.inputs import sources as inputs
from explain_cli.errors import BadInput


def test_folders_are_walked_sorted_with_image_extensions_only(photo_tree):
    (photo_tree / "C.JPEG").write_bytes((photo_tree / "b.jpg").read_bytes())
    found = inputs.discover([str(photo_tree)], io.StringIO())
    assert [s.stem for s in found] == [PurePosixPath(p) for p in ("C", "a", "b", "sub/a")]
    assert found[-1].path == photo_tree / "sub" / "a.png" and found[-1].shown == str(photo_tree / "sub" / "a.png")


def test_the_output_folder_is_skipped(photo_tree):
    out = photo_tree / "sub"
    assert [s.stem.as_posix() for s in inputs.discover([str(photo_tree)], io.StringIO(), out)] == ["a", "b"]


def test_stdin_paths_and_repeated_names_get_unique_stems(photo_tree):
    stdin = io.StringIO(f"{photo_tree / 'a.png'}\n\n{photo_tree / 'sub' / 'a.png'}\n")
    found = inputs.discover(["-", str(photo_tree / "b.jpg")], stdin)
    assert [s.stem.as_posix() for s in found] == ["a", "a-2", "b"]
    assert [s.shown for s in found][:2] == [str(photo_tree / "a.png"), str(photo_tree / "sub" / "a.png")]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    rgb = inputs.decode(inputs.Source(path, str(path), PurePosixPath("rotated"))).rgb
    assert rgb.shape == (40, 20, 3)  # upright: taller than wide
    assert rgb[2, 10, 2] > 200 and rgb[-3, 10, 0] > 200  # the blue left edge is now at the top


@pytest.mark.parametrize("mode", ["L", "I;16", "CMYK", "P", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / "image.tiff"
    Image.new(mode, (5, 4)).save(path)
    rgb = inputs.decode(inputs.Source(path, str(path), PurePosixPath("image"))).rgb
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8


def test_transparency_is_composited_on_grey(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (3, 3), (255, 0, 0, 0)).save(path)
    rgb = inputs.decode(inputs.Source(path, str(path), PurePosixPath("clear"))).rgb
    np.testing.assert_array_equal(rgb[1, 1], inputs.BACKGROUND)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello"), "not an image (Pillow cannot identify it)"),
    ],
)
def test_bad_files_raise_bad_input_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "x.jpg"
    make(path)
    with pytest.raises(BadInput) as caught:
        inputs.decode(inputs.Source(path, "shown/x.jpg", PurePosixPath("x")))
    assert str(caught.value) == f"shown/x.jpg: {reason}"


def test_model_input_resizes_and_keeps_channels():
    rgb = np.zeros((100, 60, 3), np.uint8)
    assert inputs.model_input(rgb, 32, 16, 3).shape == (16, 32, 3)
    assert inputs.model_input(rgb, 32, 16, 1).shape == (16, 32, 1)


@pytest.mark.parametrize("name, mode, orientation", [("photo.jpg", "RGB", 1), ("turned.jpg", "RGB", 6),
                                                     ("grey.png", "L", 1), ("clear.png", "RGBA", 8)])
def test_decoding_for_the_model_equals_decoding_then_resizing(tmp_path, name, mode, orientation):
    """The model's input made from Pillow's copy of the pixels, as the pipeline makes it, is the one made from the
    decoded array, whatever the mode and orientation."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (90, 130, len(mode)), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / name
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path, exif=exif)
    source = inputs.Source(path, str(path), PurePosixPath(path.stem))
    picture, x = inputs.decode_for(source, inputs.DEFAULT_MAX_PIXELS, 48, 32, 3)
    decoded = inputs.decode(source)
    np.testing.assert_array_equal(picture.rgb, decoded.rgb)
    np.testing.assert_array_equal(x, inputs.model_input(decoded.rgb, 48, 32, 3))
    assert x.shape == (32, 48, 3) and picture.rgb.shape == ((130, 90, 3) if orientation in (6, 8) else (90, 130, 3))
