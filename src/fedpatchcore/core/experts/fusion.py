"""Fusing PatchCore (the ``texture`` expert) with the logical experts, per category.

Every expert's score is z-normalised with the mean and standard deviation of its scores on the
category's GOOD validation images (:class:`Normaliser`), so "how unusual for a good part" is on
one scale for all of them; a :class:`FusionRule` then combines the z-scores:

* one expert alone (``texture``, ``global``, ``position``, ``composition``);
* ``sum``: the sum of all four z-scores; ``max``: the largest;
* ``weighted``: a weighted sum, each expert weighted by how far its own validation AUROC lies
  above chance (``max(auroc − 0.5, 0)``; equal weights when none does).

Which rule a category uses is chosen on its validation split (``core/tuning/fusion.py``).

Maps keep PatchCore's pixel resolution: the texture map is z-normalised with the texture
expert's statistics (its image score is the max of that map, so the map's max is the image's
z-score), the position expert's coarse cell map is upsampled bilinearly to the image size and
z-normalised with its own statistics, and an expert without a map (global, composition)
contributes its image z-score at every pixel; the rule combines them pixel by pixel. One scale
per category, never per image, so pixel metrics (AUC-sPRO) still compare images.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ALL_EXPERTS",
    "COMBINATIONS",
    "RULES",
    "FusionRule",
    "Normaliser",
    "auroc_weights",
    "upsample_cells",
]

#: PatchCore's score is the ``texture`` expert; the logical experts follow.
ALL_EXPERTS = ("texture", "global", "position", "composition")
#: Rules combining every expert.
COMBINATIONS = ("sum", "max", "weighted")
#: Every rule a category may use, PatchCore alone first (it wins ties).
RULES = (*ALL_EXPERTS, *COMBINATIONS)


@dataclass(frozen=True)
class Normaliser:
    """z = (score − mean) / std, with the statistics of good validation images."""

    mean: float
    std: float

    @classmethod
    def fit(cls, good_scores: np.ndarray) -> Normaliser:
        """From one expert's scores of good validation images (one image: std 1, a shift only)."""
        scores = np.asarray(good_scores, dtype=np.float64)
        if scores.size == 0 or not np.all(np.isfinite(scores)):
            raise ValueError("z-normalisation needs finite scores of at least one good validation image")
        std = float(scores.std()) if scores.size > 1 else 0.0
        floor = 1e-6 * max(1.0, float(np.abs(scores).max()))
        return cls(float(scores.mean()), std if std > floor else 1.0)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=np.float64) - self.mean) / self.std


def auroc_weights(aurocs: Mapping[str, float | None]) -> dict[str, float]:
    """``weighted``: each expert's weight ∝ ``max(auroc − 0.5, 0)`` (all equal when no expert beats chance)."""
    raw = {name: max(float(value) - 0.5, 0.0) if value is not None else 0.0 for name, value in aurocs.items()}
    total = sum(raw.values())
    if total <= 0:
        return {name: 1.0 / len(raw) for name in raw}
    return {name: value / total for name, value in raw.items()}


def upsample_cells(cell_maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Coarse ``(n, gh, gw)`` maps -> ``(n, H, W)`` float32 at ``size`` = (width, height), bilinear."""
    width, height = int(size[0]), int(size[1])
    grid = torch.from_numpy(np.ascontiguousarray(cell_maps, dtype=np.float32))[:, None]
    return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()


@dataclass
class FusionRule:
    """How one category combines its experts (``name`` of :data:`RULES`), with its statistics.

    ``weights``: expert -> weight of the rule (one expert: weight 1; ``sum``: all 1;
    ``max``: the experts maximised over, weight 1; ``weighted``: :func:`auroc_weights`).
    ``normalisers``: expert -> its :class:`Normaliser`. ``composition_k``: clusters of the
    composition expert used.
    """

    name: str
    weights: dict[str, float]
    normalisers: dict[str, Normaliser]
    composition_k: int | None = None
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"unknown fusion rule {self.name!r}; choose one of {list(RULES)}")
        missing = sorted(set(self.weights) - set(self.normalisers))
        if missing:
            raise ValueError(f"fusion rule {self.name!r} has no normalisation statistics for {missing}")

    @property
    def experts(self) -> list[str]:
        return [name for name in ALL_EXPERTS if name in self.weights]

    def _combine(self, values: dict[str, np.ndarray]) -> np.ndarray:
        if self.name == "max":
            return functools.reduce(np.maximum, [values[name] for name in self.experts])
        return sum(self.weights[name] * values[name] for name in self.experts)

    def image_scores(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """The fused image score from each expert's raw image scores ``(n,)``."""
        return self._combine({name: self.normalisers[name](scores[name]) for name in self.experts})

    def maps(
        self,
        scores: Mapping[str, np.ndarray],
        texture_maps: np.ndarray,
        cell_maps: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        """Fused maps ``(n, H, W)`` float32 at the texture maps' resolution (see the module docstring)."""
        height, width = texture_maps.shape[1:]
        values = {}
        for name in self.experts:
            z = self.normalisers[name]
            if name == "texture":
                values[name] = z(texture_maps)
            elif name in cell_maps:
                values[name] = z(upsample_cells(cell_maps[name], (width, height)))
            else:
                values[name] = z(scores[name])[:, None, None]
        fused = self._combine(values)
        return np.ascontiguousarray(np.broadcast_to(fused, texture_maps.shape), dtype=np.float32)

    def to_dict(self) -> dict:
        return {
            "rule": self.name,
            "weights": dict(self.weights),
            "normalisers": {name: {"mean": n.mean, "std": n.std} for name, n in self.normalisers.items()},
            "composition_k": self.composition_k,
            **({"details": self.details} if self.details else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> FusionRule:
        return cls(
            str(data["rule"]),
            {str(k): float(v) for k, v in data["weights"].items()},
            {str(k): Normaliser(float(v["mean"]), float(v["std"])) for k, v in data["normalisers"].items()},
            None if data.get("composition_k") is None else int(data["composition_k"]),
            dict(data.get("details") or {}),
        )

    @classmethod
    def build(
        cls,
        name: str,
        normalisers: Mapping[str, Normaliser],
        aurocs: Mapping[str, float | None] | None = None,
        composition_k: int | None = None,
    ) -> FusionRule:
        """The rule ``name`` over the experts of ``normalisers`` (``aurocs``: for ``weighted``)."""
        if name in ALL_EXPERTS:
            weights = {name: 1.0}
        elif name == "weighted":
            weights = auroc_weights({e: (aurocs or {}).get(e) for e in ALL_EXPERTS if e in normalisers})
        else:
            weights = {e: 1.0 for e in ALL_EXPERTS if e in normalisers}
        used = {e: normalisers[e] for e in weights}
        return cls(name, weights, used, composition_k)
