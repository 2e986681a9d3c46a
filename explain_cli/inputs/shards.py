"""What the command line parses before anything heavy loads: --shard I/N, and the default --max-pixels."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

# Above this many pixels an image is refused (`--max-pixels`): 120 MP holds the largest camera photos (~100 MP)
# while a "decompression bomb" of gigapixels fails at once.
DEFAULT_MAX_PIXELS = 120_000_000


@dataclass(frozen=True)
class Shard:
    """--shard I/N: the inputs whose relative path hashes to I of N."""

    index: int
    count: int

    def takes(self, source: Any) -> bool:
        """Whether the source (an inputs.Source) is this shard's."""
        return shard_of(source.relative, self.count) == self.index

    def __str__(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def shard_of(name: str, count: int) -> int:
    """A stable hash of a relative path, modulo `count`: SHA-1, the same on every machine and Python, and a
    file's shard never depends on which other files exist."""
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str) -> Shard:
    """"I/N" with 0 <= I < N; ValueError saying what is wrong otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not I/N (for example 0/4)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"{text!r}: N must be at least 1")
    if index >= count:
        raise ValueError(f"{text!r}: I must be below N (shards are numbered 0 to {count - 1})")
    return Shard(index, count)
