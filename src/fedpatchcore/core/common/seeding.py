"""One way to derive independent, reproducible random streams from the run's ``seed``.

Every random choice takes ``seed`` plus labels saying what it is for (a category, a client,
a round), so adding a category or a client never changes the draws of the others. Text
labels enter as their CRC-32, numbers as they are.
"""

from __future__ import annotations

import zlib

import numpy as np


def _entropy(seed: int, labels: tuple[int | str, ...]) -> list[int]:
    words = [int(seed)]
    for label in labels:
        words.append(zlib.crc32(label.encode("utf-8")) if isinstance(label, str) else int(label))
    return words


def derive_rng(seed: int, *labels: int | str) -> np.random.Generator:
    """A numpy generator for ``(seed, *labels)``."""
    return np.random.default_rng(_entropy(seed, labels))


def derive_seed(seed: int, *labels: int | str) -> int:
    """A 32-bit integer seed for ``(seed, *labels)`` (for APIs that take an int)."""
    return int(np.random.SeedSequence(_entropy(seed, labels)).generate_state(1)[0])
