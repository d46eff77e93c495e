"""The three logical experts of one category: what a site measures, what the server fits, how they score.

* **global**: a Gaussian of each image's mean patch feature of the DEEPER backbone stage
  (projected), Ledoit-Wolf shrunk; score = Mahalanobis distance (PUAD, Rippel et al.). Sees
  "something is missing or extra" anywhere in the image, and gives no map.
* **position**: one Gaussian per cell of a coarse ``grid`` x ``grid`` partition of the patch
  grid; a test cell is scored with the best (smallest distance) of its windows shifted by up to
  ``shift`` patches, so a part slightly off its place is tolerated and a part in another cell
  is not. "The cell where the screw belongs looks like background" is exactly a missing part.
  It pools the SHALLOWER stage: its receptive field covers the cell and little around it, so
  a cell says what is in it rather than what its neighbourhood looks like (on the synthetic
  assembly, pooling the deep stage as well cost 0.1-0.3 of logical image AUROC).
  Image score = the worst cell; the cell scores are its coarse map.
* **composition**: k-means of normal patches of the shallower stage (each ``k`` of ``clusters``; the one used is chosen on
  validation), each image's histogram of cluster areas, a Gaussian of those histograms; score =
  Mahalanobis distance (component counting in the manner of ComAD, without a segmentation
  model). No map.

:class:`CategoryStatistics` is what one site measures about one category (Gaussian sums that
merge exactly); :class:`CategoryExperts` the fitted experts the evaluator scores with. Both have a
flat ``dict[str, np.ndarray]`` form for the catalog and the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpatchcore.core.common.seeding import derive_seed
from fedpatchcore.core.experts.descriptors import (
    cell_descriptors,
    cell_edges,
    expert_projection,
    global_descriptor,
    project_patches,
)
from fedpatchcore.core.experts.gaussian import Gaussian, MomentSums
from fedpatchcore.core.experts.kmeans import histograms

__all__ = [
    "EXPERTS",
    "CategoryExperts",
    "CategoryStatistics",
    "ExpertOutputs",
    "ExpertSettings",
    "Projections",
    "category_statistics",
    "stage_parts",
]

#: The logical experts, in the order they are reported.
EXPERTS = ("global", "position", "composition")
# The run parameter block of the experts (conf/base/parameters_experts.yml).
EXPERTS_BLOCK = "experts"


@dataclass(frozen=True)
class ExpertSettings:
    """The ``experts`` parameter block (and the run's seed)."""

    enabled: bool = False
    projection_dim: int | None = 32
    grid: int = 16
    shift: int = 0
    clusters: tuple[int, ...] = (4, 8, 16)
    lloyd_rounds: int = 3
    ridge: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"experts.position.grid must be >= 1, got {self.grid}")
        if self.shift < 0:
            raise ValueError(f"experts.position.shift must be >= 0, got {self.shift}")
        if not self.clusters or min(self.clusters) < 2:
            raise ValueError(f"experts.composition.clusters must list numbers of clusters >= 2, got {self.clusters}")
        if self.lloyd_rounds < 0:
            raise ValueError(f"experts.composition.lloyd_rounds must be >= 0, got {self.lloyd_rounds}")
        if self.ridge <= 0:
            raise ValueError(f"experts.ridge must be > 0, got {self.ridge}")

    @classmethod
    def from_parameters(cls, experts: Mapping[str, Any] | None, seed: int = 0) -> ExpertSettings:
        experts = dict(experts or {})
        position = dict(experts.get("position") or {})
        composition = dict(experts.get("composition") or {})
        defaults = cls()
        return cls(
            enabled=bool(experts.get("enabled", False)),
            projection_dim=experts.get("projection_dim", defaults.projection_dim),
            grid=int(position.get("grid", defaults.grid)),
            shift=int(position.get("shift", defaults.shift)),
            clusters=tuple(sorted({int(k) for k in composition.get("clusters", defaults.clusters)})),
            lloyd_rounds=int(composition.get("lloyd_rounds", defaults.lloyd_rounds)),
            ridge=float(experts.get("ridge", defaults.ridge)),
            seed=int(seed),
        )

    def projection(self, dim: int, part: str) -> np.ndarray | None:
        """The public projection of one stage's ``dim`` channels (``part``: shallow | deep)."""
        return expert_projection(dim, self.projection_dim, derive_seed(self.seed, part))


def stage_parts(features: np.ndarray, shallow_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, h, w, d)`` features -> (shallow stage's channels, deep stage's channels).

    The embedding concatenates the shallow stage's ``shallow_dim`` channels and the deep stage's;
    a ``shallow_dim`` of 0 (or ``d``: the split is unknown) gives every channel to both.
    """
    if 0 < shallow_dim < features.shape[-1]:
        return features[..., :shallow_dim], features[..., shallow_dim:]
    return features, features


# --------------------------------------------------------------------------------------------
# what a site measures


@dataclass
class CategoryStatistics:
    """One site's Gaussian sums for one category: global (one Gaussian) and position (one per cell)."""

    global_: MomentSums  # of the deep stage
    position: MomentSums  # of the shallow stage
    feature_dim: int  # d of the patch features the sums were projected from
    shallow_dim: int  # channels of the shallow stage among them

    def merge(self, other: CategoryStatistics) -> CategoryStatistics:
        if (other.feature_dim, other.shallow_dim) != (self.feature_dim, self.shallow_dim):
            raise ValueError(
                f"cannot merge expert statistics of {other.feature_dim}-dimensional features into "
                f"{self.feature_dim}-dimensional ones (every site must extract a category with the same network)"
            )
        return CategoryStatistics(
            self.global_.merge(other.global_), self.position.merge(other.position), self.feature_dim, self.shallow_dim
        )

    @property
    def n_images(self) -> int:
        return int(self.global_.n)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            **self.global_.to_arrays(f"{prefix}/global"),
            **self.position.to_arrays(f"{prefix}/position"),
            f"{prefix}/feature_dim": np.asarray(self.feature_dim, dtype=np.int64),
            f"{prefix}/shallow_dim": np.asarray(self.shallow_dim, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> CategoryStatistics:
        return cls(
            MomentSums.from_arrays(arrays, f"{prefix}/global"),
            MomentSums.from_arrays(arrays, f"{prefix}/position"),
            int(arrays[f"{prefix}/feature_dim"]),
            int(arrays[f"{prefix}/shallow_dim"]),
        )


@dataclass(frozen=True)
class Projections:
    """The public maps of a category's shallow and deep stage channels (None: not projected)."""

    feature_dim: int
    shallow_dim: int
    shallow: np.ndarray | None
    deep: np.ndarray | None

    @classmethod
    def of(cls, feature_dim: int, shallow_dim: int, settings: ExpertSettings) -> Projections:
        shallow, deep = stage_parts(np.zeros((1, 1, 1, feature_dim)), shallow_dim)
        return cls(
            feature_dim,
            shallow_dim,
            settings.projection(shallow.shape[-1], "shallow"),
            settings.projection(deep.shape[-1], "deep"),
        )

    def __call__(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Projected (shallow, deep) patches ``(B, h, w, p)`` of features ``(B, h, w, d)``."""
        if features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"patch features have {features.shape[-1]} dimensions, the experts were fitted on {self.feature_dim}"
            )
        shallow, deep = stage_parts(features, self.shallow_dim)
        return project_patches(shallow, self.shallow), project_patches(deep, self.deep)

    def dims(self) -> tuple[int, int]:
        shallow, deep = stage_parts(np.zeros((1, 1, 1, self.feature_dim)), self.shallow_dim)
        return (
            shallow.shape[-1] if self.shallow is None else self.shallow.shape[1],
            deep.shape[-1] if self.deep is None else self.deep.shape[1],
        )


def category_statistics(
    feature_batches: Iterable[np.ndarray], settings: ExpertSettings, shallow_dim: int = 0
) -> CategoryStatistics:
    """The sums of one site's images of one category, from its patch features ``(B, h, w, d)``
    batches; ``shallow_dim``: channels of the shallow stage (0: unknown, every channel for both)."""
    stats: CategoryStatistics | None = None
    projections = None
    for features in feature_batches:
        if stats is None:
            projections = Projections.of(int(features.shape[-1]), int(shallow_dim), settings)
            p_shallow, p_deep = projections.dims()
            cells = tuple(len(cell_edges(size, settings.grid)) - 1 for size in features.shape[1:3])
            stats = CategoryStatistics(
                MomentSums.zeros((), p_deep), MomentSums.zeros(cells, p_shallow), projections.feature_dim, int(shallow_dim)
            )
        shallow, deep = projections(features)
        stats.global_.add(global_descriptor(deep))
        stats.position.add(cell_descriptors(shallow, settings.grid)[:, 0])
    if stats is None:
        raise ValueError("no image to measure: a category's expert statistics need at least one image")
    return stats


# --------------------------------------------------------------------------------------------
# fitted experts and their scores


@dataclass
class ExpertOutputs:
    """Raw scores of a batch of images: per expert ``(B,)``; ``composition`` per k; coarse maps."""

    scores: dict[str, np.ndarray]  # "global", "position" -> (B,)
    composition: dict[int, np.ndarray]  # k -> (B,)
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # "position" -> (B, gh, gw)


@dataclass
class CategoryExperts:
    """The fitted experts of one category."""

    projections: Projections
    grid: int
    shift: int
    global_: Gaussian
    position: Gaussian  # batch (gh, gw)
    centroids: dict[int, np.ndarray]  # k -> (k', p) (k' <= k when the bank had fewer rows)
    composition: dict[int, Gaussian]  # k -> Gaussian of k'-dimensional histograms
    n_images: int = 0

    @property
    def feature_dim(self) -> int:
        return self.projections.feature_dim

    def score(self, features: np.ndarray) -> ExpertOutputs:
        """Scores of patch features ``(B, h, w, d)`` of one category's images."""
        shallow, deep = self.projections(features)
        cells = cell_descriptors(shallow, self.grid, self.shift)  # (B, S, gh, gw, p)
        per_window = self.position.mahalanobis(cells)  # (B, S, gh, gw)
        cell_scores = per_window.min(axis=1)
        scores = {
            "global": self.global_.mahalanobis(global_descriptor(deep)),
            "position": cell_scores.reshape(len(cell_scores), -1).max(axis=1),
        }
        composition = {k: self.composition[k].mahalanobis(histograms(shallow, c)) for k, c in self.centroids.items()}
        return ExpertOutputs(scores, composition, {"position": cell_scores})

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {
            f"{prefix}/feature_dim": np.asarray(self.feature_dim, dtype=np.int64),
            f"{prefix}/shallow_dim": np.asarray(self.projections.shallow_dim, dtype=np.int64),
            f"{prefix}/grid": np.asarray(self.grid, dtype=np.int64),
            f"{prefix}/shift": np.asarray(self.shift, dtype=np.int64),
            f"{prefix}/n_images": np.asarray(self.n_images, dtype=np.int64),
            **_gaussian_arrays(self.global_, f"{prefix}/global"),
            **_gaussian_arrays(self.position, f"{prefix}/position"),
        }
        for part in ("shallow", "deep"):
            if getattr(self.projections, part) is not None:
                out[f"{prefix}/projection_{part}"] = getattr(self.projections, part)
        for k, centroids in self.centroids.items():
            out[f"{prefix}/composition_{k}/centroids"] = centroids
            out.update(_gaussian_arrays(self.composition[k], f"{prefix}/composition_{k}"))
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> CategoryExperts:
        ks = sorted(
            int(key[len(prefix) + len("/composition_") :].split("/")[0])
            for key in arrays
            if key.startswith(f"{prefix}/composition_") and key.endswith("/centroids")
        )
        return cls(
            projections=Projections(
                int(arrays[f"{prefix}/feature_dim"]),
                int(arrays[f"{prefix}/shallow_dim"]),
                arrays.get(f"{prefix}/projection_shallow"),
                arrays.get(f"{prefix}/projection_deep"),
            ),
            grid=int(arrays[f"{prefix}/grid"]),
            shift=int(arrays[f"{prefix}/shift"]),
            global_=_gaussian_from(arrays, f"{prefix}/global"),
            position=_gaussian_from(arrays, f"{prefix}/position"),
            centroids={k: np.asarray(arrays[f"{prefix}/composition_{k}/centroids"]) for k in ks},
            composition={k: _gaussian_from(arrays, f"{prefix}/composition_{k}") for k in ks},
            n_images=int(arrays.get(f"{prefix}/n_images", 0)),
        )


def _gaussian_arrays(gaussian: Gaussian, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}/mean": gaussian.mean,
        f"{prefix}/precision": gaussian.precision,
        f"{prefix}/shrinkage": np.asarray(gaussian.shrinkage),
    }


def _gaussian_from(arrays: Mapping[str, np.ndarray], prefix: str) -> Gaussian:
    return Gaussian(
        np.asarray(arrays[f"{prefix}/mean"]),
        np.asarray(arrays[f"{prefix}/precision"]),
        np.asarray(arrays[f"{prefix}/shrinkage"]),
    )
