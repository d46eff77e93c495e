"""Fair shares of a row budget among groups (product categories or clients).

Wherever rows are chosen under a budget, a group with ten times more images would otherwise take
ten times more of it, and a small group's normal variation goes missing. :func:`group_quotas`
splits a budget among groups by one of three modes (``fairness.mode``):

* ``none``: quota ∝ the group's candidate rows, what a naive union of all rows would keep
  (uniform thinning). A group with 10% of the rows gets 10% of the budget.
* ``proportional``: quota ∝ the group's size in training images, but at least
  ``min_share`` × budget (capped at ``budget // groups`` so the floors always fit).
* ``equal``: the same quota for every group.

In every mode: a group never gets more than its candidates, and what a short group cannot use is
redistributed among the others (by the same mode) until the budget or every candidate is used,
so ``sum(quotas) == min(budget, sum(candidates))`` exactly. ``minimum`` guarantees every group
with candidates at least that many rows (one row keeps a category scorable). Quotas are whole
rows, rounded by largest remainder with ties to the earlier group (deterministic). Optional
``weights`` multiply each group's mode weight (the server passes client trust there).

Where the budgets are (``fairness.group_by``):

* ``category``: the server's ``aggregation.total_bank_size`` (one budget over every category)
  is split among categories; a client holding several categories (the QC client) splits its own
  coreset budget (``coreset.total_size``, or the rows ``coreset.ratio`` would keep) among them.
  k-center then runs within each category's quota, as before.
* ``client``: each category's bank (``aggregation.global_bank_size``) is split among the
  clients holding it (``federated_coreset``, ``trust``, ``consensus``); ``none`` keeps the
  strategy's own split (∝ images × client weight).

Plain Python on dicts and numpy; no Kedro.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpatchcore.core.common.quotas import capped_quotas

MODES = ("none", "proportional", "equal")
GROUP_BY = ("category", "client")


@dataclass(frozen=True)
class FairnessSettings:
    """The ``fairness`` parameter block (defaults: conf/base/parameters_fairness.yml's)."""

    mode: str = "none"
    group_by: str = "category"
    min_share: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fairness.mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.group_by not in GROUP_BY:
            raise ValueError(f"fairness.group_by must be one of {list(GROUP_BY)}, got {self.group_by!r}")
        if not 0.0 <= float(self.min_share) <= 1.0:
            raise ValueError(f"fairness.min_share must lie in [0, 1], got {self.min_share!r}")

    @classmethod
    def from_parameters(cls, fairness: Mapping[str, Any] | None) -> FairnessSettings:
        fairness = dict(fairness or {})
        return cls(
            mode=str(fairness.get("mode", cls.mode)),
            group_by=str(fairness.get("group_by", cls.group_by)),
            min_share=float(fairness.get("min_share", cls.min_share)),
        )

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def by(self, group_by: str) -> bool:
        """Whether quotas among ``group_by`` groups follow a fairness mode other than ``none``."""
        return self.active and self.group_by == group_by

    def shapes_client_coreset(self, total_size: int | None) -> bool:
        """Whether a client's per-category coreset sizes differ from ``ratio`` × each category's patches."""
        return shapes_client_coreset(self.mode, self.group_by, total_size)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "group_by": self.group_by, "min_share": float(self.min_share)}


def shapes_client_coreset(mode: str, group_by: str, total_size: int | None) -> bool:
    """Whether ``fairness`` (and ``coreset.total_size``) change a client's per-category coreset sizes.

    They do when budgets are split among categories and there is a budget to split: a fairness
    mode, or one ``total_size`` over all the client's categories.
    """
    return group_by == "category" and (mode != "none" or total_size is not None)


def _floored(weights: np.ndarray, floors: np.ndarray, caps: np.ndarray, budget: int) -> np.ndarray:
    """Integer quotas ∝ ``weights``, each at least its floor and at most its cap, summing to ``budget``.

    Water-filling: groups whose proportional share falls under their floor are pinned at the
    floor (repeated, since pinning one lowers the others' shares); the others share the rest by
    :func:`capped_quotas`; whatever caps leave over goes to groups with room left.
    """
    n = len(weights)
    pinned = np.zeros(n, dtype=bool)
    eligible = caps > 0
    while True:
        rest = eligible & ~pinned
        left = budget - int(floors[pinned].sum())
        total_weight = float(weights[rest].sum())
        if not rest.any():
            break
        if total_weight <= 0:
            pinned |= rest
            continue
        share = np.where(rest, weights / total_weight * left, np.inf)
        below = rest & (share < floors)
        if not below.any():
            break
        pinned |= below
    quotas = np.where(pinned, floors, 0).astype(np.int64)
    rest = eligible & ~pinned
    left = budget - int(quotas.sum())
    if rest.any() and left > 0:
        quotas[rest] = capped_quotas(weights[rest], caps[rest], left)
    # Leftover (every unpinned group at its cap, or zero weights): groups with room take it,
    # by their weights first, then evenly.
    for fill in (weights, np.ones(n)):
        left = budget - int(quotas.sum())
        if left <= 0:
            break
        room = caps - quotas
        quotas += capped_quotas(np.where(room > 0, fill, 0.0), np.maximum(room, 0), left)
    return quotas


def group_quotas(
    group_sizes: Mapping[Hashable, float],
    candidates: Mapping[Hashable, int],
    budget: int,
    mode: str,
    min_share: float = 0.0,
    *,
    minimum: int = 0,
    weights: Mapping[Hashable, float] | None = None,
) -> dict[Hashable, int]:
    """Rows of ``budget`` for each group (keys and order of ``group_sizes``).

    ``group_sizes``: images per group (the ``proportional`` weights); ``candidates``: rows each
    group can give (its cap; a missing group has none). Every group with candidates gets at least
    ``minimum`` rows; ``proportional`` also at least ``min(ceil(min_share × budget), budget //
    groups)``. A floor is capped at the group's candidates (the group gives all it has and the
    rest is redistributed). Raises ValueError if the minimum rows of every group exceed the budget.
    """
    if mode not in MODES:
        raise ValueError(f"fairness.mode must be one of {list(MODES)}, got {mode!r}")
    if int(budget) != budget or budget < 0:
        raise ValueError(f"a row budget must be a non-negative integer, got {budget!r}")
    groups = list(group_sizes)
    sizes = np.array([float(group_sizes[g]) for g in groups], dtype=np.float64)
    caps = np.array([max(int(candidates.get(g, 0)), 0) for g in groups], dtype=np.int64)
    extra = np.array([float((weights or {}).get(g, 1.0)) for g in groups], dtype=np.float64)
    for name, values in (("group sizes", sizes), ("weights", extra)):
        if (values < 0).any() or not np.isfinite(values).all():
            raise ValueError(f"{name} must be finite and >= 0, got {dict(zip(groups, values.tolist(), strict=True))}")
    if not groups:
        return {}
    eligible = caps > 0
    n_eligible = int(eligible.sum())
    budget = int(min(int(budget), int(caps.sum())))
    if mode == "none":
        base = caps.astype(np.float64)
    elif mode == "proportional":
        base = sizes
    else:
        base = np.ones(len(groups))
    weights_arr = np.where(eligible, base * extra, 0.0)
    floor = int(minimum)
    if mode == "proportional" and n_eligible:
        floor = max(floor, min(math.ceil(float(min_share) * budget), budget // n_eligible))
    floors = np.where(eligible, np.minimum(floor, caps), 0).astype(np.int64)
    if floors.sum() > budget:
        raise ValueError(
            f"a budget of {budget} rows cannot give each of {n_eligible} groups its minimum of {minimum} row(s)"
        )
    quotas = _floored(weights_arr, floors, caps, budget)
    return {g: int(q) for g, q in zip(groups, quotas, strict=True)}
