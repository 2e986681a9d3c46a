"""The random control: a map of noise, which any method worth trusting must beat (evaluate measures both alike)."""

from __future__ import annotations

import zlib

import numpy as np


def random_map(seed: int, image: str, class_index: int, *sides: int) -> np.ndarray:
    """Uniform noise of (height, width) (a volume's (depth, height, width)), the same for the same (seed, image, class)
    on any machine; evaluate draws it at the model input's resolution, a value per pixel."""
    key = zlib.crc32(image.encode("utf-8", "surrogateescape"))
    return np.random.default_rng([seed, key, class_index]).random(sides).astype(np.float32)
