"""Integer shares of a budget: how many images each client gets, how many rows each client keeps.

Both functions round by largest remainder with ties to the lower index, so results are
deterministic and sum exactly to the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def largest_remainder(weights: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing exactly to ``total``, proportional to ``weights`` (all > 0 somewhere)."""
    p = np.asarray(weights, dtype=np.float64)
    ideal = p / p.sum() * int(total)
    counts = np.floor(ideal).astype(np.int64)
    short = int(total) - int(counts.sum())
    if short > 0:
        order = sorted(range(len(p)), key=lambda i: (-(ideal[i] - counts[i]), i))
        for i in order[:short]:
            counts[i] += 1
    return counts


def capped_quotas(weights: Sequence[float], capacities: Sequence[int], total: int) -> np.ndarray:
    """Integer quotas summing exactly to ``min(total, sum of usable capacities)``, ∝ ``weights``.

    A member whose proportional share reaches its capacity gets its capacity and the rest is
    shared among the others (repeated until no share exceeds a capacity); the final shares
    are rounded by largest remainder. Weight-0 members get 0.
    """
    w = np.asarray(weights, dtype=np.float64)
    cap = np.asarray(capacities, dtype=np.int64)
    if w.shape != cap.shape:
        raise ValueError("weights and capacities must have the same length")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"quota weights must be finite and >= 0, got {w.tolist()}")
    quotas = np.zeros(len(w), dtype=np.int64)
    active = (w > 0) & (cap > 0)
    budget = int(min(int(total), int(cap[active].sum()) if active.any() else 0))
    if budget <= 0:
        return quotas
    while True:
        idx = np.flatnonzero(active)
        share = w[idx] / w[idx].sum() * budget
        full = share >= cap[idx]
        if not full.any():
            break
        for i in idx[full]:
            quotas[i] = cap[i]
            budget -= int(cap[i])
            active[i] = False
        if budget == 0 or not active.any():
            return quotas
    idx = np.flatnonzero(active)
    quotas[idx] = largest_remainder(w[idx], budget)
    return quotas
