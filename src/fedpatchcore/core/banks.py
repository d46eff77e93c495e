"""Memory banks of several categories, and their flat ``.npz`` form.

A client's coreset, an upload and the server's global bank are all "one bank per category"
plus how many training images stand behind each. On disk they are one ``.npz`` with keys
``bank/<category>``, ``n_images/<category>`` and, for aggregated banks, ``origin/<category>``
(the client each row came from), readable by plain ``np.load``.
"""

from __future__ import annotations

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
