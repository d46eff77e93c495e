"""Memory banks of several categories, and their flat ``.npz`` form.

A client's coreset, an upload and the server's global bank are all "one bank per category"
plus how many training images stand behind each. On disk they are one ``.npz`` with keys
``bank/<category>``, ``n_images/<category>`` and, for aggregated banks, ``origin/<category>``
(the client each row came from), readable by plain ``np.load``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CategoryBanks:
    banks: dict[str, np.ndarray]  # category -> float32 (rows, dim)
    n_images: dict[str, int]  # category -> training images the rows were chosen from
    origin: dict[str, np.ndarray] = field(default_factory=dict)  # category -> client id per row

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for category, bank in self.banks.items():
            arrays[f"bank/{category}"] = np.asarray(bank)
            arrays[f"n_images/{category}"] = np.asarray(int(self.n_images.get(category, 0)))
        for category, origin in self.origin.items():
            arrays[f"origin/{category}"] = np.asarray(origin, dtype=str)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> CategoryBanks:
        banks, n_images, origin = {}, {}, {}
        for key, value in arrays.items():
            kind, _, category = key.partition("/")
            if kind == "bank":
                banks[category] = np.asarray(value, dtype=np.float32)
            elif kind == "n_images":
                n_images[category] = int(value)
            elif kind == "origin":
                origin[category] = np.asarray(value)
            else:
                raise ValueError(f"unexpected entry '{key}' in a memory-bank file")
        return cls(banks, n_images, origin)

    @property
    def n_rows(self) -> int:
        return int(sum(len(bank) for bank in self.banks.values()))

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(bank).nbytes for bank in self.banks.values()))


def bank_fingerprint(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the rows a search index is built from: every ``bank/<category>`` entry.

    Covers category names, shapes and the float32 bytes (what the index holds), in sorted
    category order; ``n_images`` and ``origin`` do not change an index and are left out. Two
    banks with equal fingerprints give identical indexes.
    """
    digest = hashlib.sha256()
    for key in sorted(k for k in arrays if k.startswith("bank/")):
        rows = np.ascontiguousarray(arrays[key], dtype=np.float32)
        digest.update(f"{key}|{rows.shape}|".encode())
        digest.update(rows.data)
    return digest.hexdigest()
