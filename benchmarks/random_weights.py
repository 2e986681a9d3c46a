"""Random weights for a built-in architecture, saved once per machine (benchmarks never download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def random_weights(keras: Any, constructor: str) -> Path:
    """A seeded random-weight file for keras.applications.<constructor>, made on first use."""
    path = Path(f"/tmp/explain-bench-{constructor.lower()}.weights.h5")
    if not path.exists():
        keras.utils.set_random_seed(0)
        getattr(keras.applications, constructor)(weights=None).save_weights(path)
    return path
