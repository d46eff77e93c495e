"""How close a synthetic memory bank is to real embeddings: sliced Wasserstein distance and MMD.

Both compare two sets of patch vectors of one category (e.g. vectors sampled from the DP-CVAE's
global decoder and real embeddings of held-out good images). Sets are subsampled to at most
``max_rows`` rows each (seeded), so the cost stays bounded.

* Sliced Wasserstein-1: the mean over ``n_projections`` random unit directions θ of the 1-D
  Wasserstein-1 distance between the projections θ·x and θ·y (quantiles at common levels). In
  the embedding's own units: a set moved by a vector v is E_θ|θ·v| away.
* MMD² (RBF kernel, median-distance bandwidth): :func:`fedpatchcore.core.federation.trust.mmd2`,
  the same estimate trust uses.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.federation.trust import mmd2


def _subsample(rows: np.ndarray, max_rows: int, seed: int, *labels: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1])
    if len(rows) <= max_rows:
        return rows
    keep = np.sort(derive_rng(seed, "fidelity", *labels).choice(len(rows), size=max_rows, replace=False))
    return rows[keep]


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, n_projections: int, seed: int) -> float:
    """Sliced Wasserstein-1 distance between two row sets of the same dimension."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"sliced_wasserstein needs two (n, d) sets of one dimension, got {x.shape} and {y.shape}"
        )
    if not len(x) or not len(y):
        raise ValueError("sliced_wasserstein needs two non-empty sets")
    directions = derive_rng(seed, "sliced_wasserstein").normal(size=(x.shape[1], int(n_projections)))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    levels = (np.arange(max(len(x), len(y))) + 0.5) / max(len(x), len(y))
    px = np.quantile(x @ directions, levels, axis=0)
    py = np.quantile(y @ directions, levels, axis=0)
    return float(np.abs(px - py).mean())


def fidelity(
    synthetic: Mapping[str, np.ndarray],
    real: Mapping[str, np.ndarray],
    *,
    n_projections: int,
    max_rows: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Per category present in both: ``sliced_wasserstein`` and ``mmd2`` of synthetic against real,
    plus ``mean`` over the categories."""
    out: dict[str, dict[str, float]] = {}
    for category in sorted(set(synthetic) & set(real)):
        a = _subsample(synthetic[category], max_rows, seed, "synthetic", category)
        b = _subsample(real[category], max_rows, seed, "real", category)
        out[category] = {
            "sliced_wasserstein": sliced_wasserstein(a, b, n_projections, seed),
            "mmd2": mmd2(a, b),
        }
    if out:
        out["mean"] = {
            key: float(np.mean([v[key] for v in out.values()])) for key in ("sliced_wasserstein", "mmd2")
        }
    return out
