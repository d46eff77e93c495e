"""Memory banks of several categories, what a client uploads, their flat ``.npz`` form, and
nearest-neighbour search over a bank (``knn``).

Imports: ``common``, ``data``, ``features``, ``coreset``.

A client's coreset, an upload and the server's global bank are all "one bank per category"
plus how many training images stand behind each. On disk (and on the wire) they are flat
dicts of arrays keyed ``<kind>/<category>``, readable by plain ``np.load``:

* :class:`CategoryBanks` (a global or centralized bank): ``bank/``, ``n_images/`` and, for
  aggregated banks, ``origin/`` (the client each row came from) and ``origin_row/`` (the row
  of that client's local coreset it is), so every row can be traced back to a client. A
  private summary bank (``privacy.mechanism: summary``) has centres as rows and ``radius/``:
  each centre's released spread, which scoring divides distances by.
* :class:`ClientUpload` (what one client sends for one round): ``bank/``, ``n_images/``,
  ``row_id/`` (the row of the client's local coreset each uploaded row is) and
  ``number/<name>`` scalars the client reports about itself (image quality, privacy
  budget). The arrays and the numbers map one to one onto a Flower ``ArrayRecord`` and
  ``MetricRecord`` (:meth:`ClientUpload.record_parts`: ``bank/``, ``row_id/`` arrays;
  ``n_images/`` and ``number/`` scalars).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np


def pack(**kinds: Mapping[str, object]) -> dict[str, np.ndarray]:
    """``pack(bank={"a": x})`` -> ``{"bank/a": x}``: the flat form of per-category arrays."""
    return {f"{kind}/{name}": np.asarray(value) for kind, values in kinds.items() for name, value in values.items()}


def unpack(arrays: Mapping[str, np.ndarray], kinds: Iterable[str], what: str) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of :func:`pack`; an entry of another kind is an error naming ``what`` it was read as."""
    out: dict[str, dict[str, np.ndarray]] = {kind: {} for kind in kinds}
    for key, value in arrays.items():
        kind, _, name = key.partition("/")
        if kind not in out or not name:
            raise ValueError(f"unexpected entry '{key}' in {what} (expected {sorted(out)} entries)")
        out[kind][name] = value
    return out


@dataclass
class CategoryBanks:
    banks: dict[str, np.ndarray]  # category -> float32 (rows, dim)
    n_images: dict[str, int]  # category -> training images the rows were chosen from
    origin: dict[str, np.ndarray] = field(default_factory=dict)  # category -> client id per row
    origin_row: dict[str, np.ndarray] = field(default_factory=dict)  # category -> row in that client's coreset
    radius: dict[str, np.ndarray] = field(default_factory=dict)  # category -> spread per row (summary banks only)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return pack(
            bank=self.banks,
            n_images={c: int(self.n_images.get(c, 0)) for c in self.banks},
            origin={c: np.asarray(o, dtype=str) for c, o in self.origin.items()},
            origin_row={c: np.asarray(r, dtype=np.int64) for c, r in self.origin_row.items()},
            radius={c: np.asarray(r, dtype=np.float32) for c, r in self.radius.items()},
        )

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CategoryBanks:
        parts = unpack(arrays, ("bank", "n_images", "origin", "origin_row", "radius"), "a memory-bank file")
        return cls(
            {c: np.asarray(b, dtype=np.float32) for c, b in parts["bank"].items()},
            {c: int(n) for c, n in parts["n_images"].items()},
            parts["origin"],
            {c: np.asarray(r, dtype=np.int64) for c, r in parts["origin_row"].items()},
            {c: np.asarray(r, dtype=np.float32) for c, r in parts["radius"].items()},
        )

    @property
    def n_rows(self) -> int:
        return int(sum(len(bank) for bank in self.banks.values()))

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(bank).nbytes for bank in self.banks.values()))


@dataclass
class ClientUpload:
    """What one client sends in one round: a bank per category and what stands behind it."""

    client_id: str
    banks: dict[str, np.ndarray]  # category -> (m, d) float32 rows
    n_images: dict[str, int]  # category -> training images behind that bank
    row_ids: dict[str, np.ndarray] = field(default_factory=dict)  # category -> row of the local coreset
    numbers: dict[str, float] = field(default_factory=dict)  # self-reported scalars ("quality.sharpness", ...)

    def __post_init__(self) -> None:
        # Rows without explicit ids are the client's coreset in order (e.g. hand-made uploads).
        for category, bank in self.banks.items():
            if category not in self.row_ids:
                self.row_ids[category] = np.arange(len(np.asarray(bank)), dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of the banks as sent (their own dtype: 4 per value for float32)."""
        return int(sum(np.asarray(b).nbytes for b in self.banks.values()))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return pack(
            bank=self.banks,
            n_images={c: int(n) for c, n in self.n_images.items()},
            row_id=self.row_ids,
            number={name: float(value) for name, value in self.numbers.items()},
        )

    @classmethod
    def from_arrays(cls, client_id: str, arrays: Mapping[str, np.ndarray]) -> ClientUpload:
        parts = unpack(arrays, ("bank", "n_images", "row_id", "number"), f"the upload of client '{client_id}'")
        return cls(
            client_id=str(client_id),
            banks=dict(parts["bank"]),
            n_images={c: int(n) for c, n in parts["n_images"].items()},
            row_ids={c: np.asarray(r, dtype=np.int64) for c, r in parts["row_id"].items()},
            numbers={name: float(v) for name, v in parts["number"].items()},
        )

    def record_parts(self) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
        """The upload as (arrays, scalars): what a transport carries as arrays and as numbers.

        Arrays: ``bank/<category>``, ``row_id/<category>``; scalars: ``n_images/<category>``
        (int) and ``number/<name>`` (float). :meth:`from_record_parts` is the inverse.
        """
        arrays = pack(bank=self.banks, row_id=self.row_ids)
        scalars: dict[str, int | float] = {f"n_images/{c}": int(n) for c, n in self.n_images.items()}
        scalars.update({f"number/{name}": float(value) for name, value in self.numbers.items()})
        return arrays, scalars

    @classmethod
    def from_record_parts(
        cls, client_id: str, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, int | float]
    ) -> ClientUpload:
        """Inverse of :meth:`record_parts`; an entry of another kind raises ValueError.

        Shapes and values are not checked here: the server's validation does that.
        """
        what = f"the upload of client '{client_id}'"
        parts = unpack(arrays, ("bank", "row_id"), what)
        numbers = unpack(scalars, ("n_images", "number"), what)
        return cls(
            client_id=str(client_id),
            banks=dict(parts["bank"]),
            n_images={c: int(n) for c, n in numbers["n_images"].items()},
            row_ids={c: np.asarray(r) for c, r in parts["row_id"].items()},
            numbers={name: float(v) for name, v in numbers["number"].items()},
        )


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
