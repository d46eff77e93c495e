"""Differentially private release of a client's patch vectors, and the budget bookkeeping.

What leaves a site under ``privacy.enabled`` is produced in this order (the release)::

    patch features of image i ──(1) m positions, chosen from (seed, client, image key) only──►
    m vectors ──(2) public projection to projection_dim (optional, seeded, data-independent)──►
    ──(3) L2 clipping to clip_norm C──► ──(4) + N(0, σ²) on every coordinate──► released rows

and everything after it (the local k-center, the uploads of every round, the server, scoring)
works on the released rows only: post-processing, which costs no budget. Noise added after a
data-dependent choice (k-center on raw vectors, then noise) would not protect the choice.

**Neighbouring relation: replace-one.** Two datasets of a client are neighbours when one
*unit* (``privacy.unit``) is replaced by another; the number of units stays the same, so the
image counts a client reports are public. The released rows of a category are randomly
permuted before they leave :func:`release_category`, so the output depends on the multiset of
units, not on their order (file names).

* ``unit: image`` (default): one image contributes ``m = patches_per_image`` clipped vectors,
  so replacing it moves the concatenated release by at most ``Δ₂ = 2C√m``.
* ``unit: patch``: one patch vector, ``Δ₂ = 2C``. It says nothing useful about an image: by
  group privacy an image's m patches are only (mε, m·e^{(m-1)ε}·δ)-protected.

**σ from ε** comes from a maintained accountant, never from a formula written here: Opacus'
``get_noise_multiplier`` with its RDP or PRV accountant, or dp-accounting's analytic Gaussian
(Balle & Wang 2018); σ = noise multiplier × Δ₂. The ε reported is computed back from σ by the
same accountant. Each client releases its rows once; rounds r > 1 re-select among rows already
released (post-processing), so ``rounds`` in the budget is 1. A mechanism released k times
composes through the accountant (``releases=k``), and :class:`PrivacyLedger` composes
different mechanisms of one client (this release, DP-SGD of a model trained with Opacus).

**Randomness.** Positions and the projection derive from the run's ``seed``: they are public and
may be. The noise must not be reproducible by whoever knows the parameters: with
``privacy.noise_seed: null`` (default) it comes from fresh OS entropy; an integer makes runs
reproducible for experiments and voids the guarantee against anyone who knows that integer.
numpy's generator is not a cryptographic one and floating-point Gaussian sampling has known
side channels (Jin et al. 2022); a deployment should sample the noise with a CSPRNG.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpatchcore.core.common.seeding import derive_rng, derive_seed
from fedpatchcore.core.features.projection import random_projection_matrix
from fedpatchcore.core.privacy.accounting import ACCOUNTANTS, PrivacyLedger, noise_multiplier_for

logger = logging.getLogger(__name__)

UNITS = ("image", "patch")
NEIGHBOURING = "replace-one"
# Keys of the ``privacy`` block (``audit`` is read by the membership-inference audit only).
SETTING_KEYS = (
    "enabled",
    "epsilon",
    "delta",
    "clip_norm",
    "patches_per_image",
    "projection_dim",
    "unit",
    "accountant",
    "noise_seed",
    "audit",
    "mechanism",
    "dp_cvae",
)
# What a client releases: its rows (this module) or a DP conditional VAE of them (``generative``).
MECHANISMS = ("rows", "dp_cvae")
# Rows gathered and noised at a time (bounds the memory of a release, whatever the client size).
_IMAGES_PER_CHUNK = 1024


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AuditSettings:
    """The membership-inference audit of a variant's global bank (``privacy.audit``)."""

    enabled: bool = False
    statistic: str = "min"  # per image: min | mean | max over its patches of the distance to the bank
    max_images_per_category: int | None = None  # members and non-members each (seeded sample; null: all)

    @classmethod
    def from_parameters(cls, block: Mapping[str, Any] | None) -> AuditSettings:
        block = dict(block or {})
        unknown = sorted(set(block) - {"enabled", "statistic", "max_images_per_category"})
        if unknown:
            raise ValueError(f"privacy.audit: unknown keys {unknown}")
        statistic = str(block.get("statistic", "min"))
        if statistic not in ("min", "mean", "max"):
            raise ValueError(f"privacy.audit.statistic must be min, mean or max, got {statistic!r}")
        limit = block.get("max_images_per_category")
        return cls(bool(block.get("enabled", False)), statistic, None if limit is None else int(limit))


@dataclass(frozen=True)
class PrivacySettings:
    """The ``privacy`` parameter block, checked; ``seed`` is the run's (positions, projection)."""

    enabled: bool = False
    epsilon: float = 1.0
    delta: float = 1e-5
    clip_norm: float = 64.0
    patches_per_image: int = 16
    projection_dim: int | None = None
    unit: str = "image"
    accountant: str = "prv"
    noise_seed: int | None = None
    seed: int = 0
    audit: AuditSettings = AuditSettings()
    mechanism: str = "rows"

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"privacy.mechanism must be one of {list(MECHANISMS)}, got {self.mechanism!r}")
        if self.unit not in UNITS:
            raise ValueError(f"privacy.unit must be one of {list(UNITS)}, got {self.unit!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"privacy.accountant must be one of {list(ACCOUNTANTS)}, got {self.accountant!r}")
        if not self.enabled:
            return
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(
                f"privacy.epsilon must be a positive finite number, got {self.epsilon} (no privacy: enabled: false)"
            )
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"privacy.delta must lie in (0, 1), got {self.delta}")
        if not self.clip_norm > 0:
            raise ValueError(f"privacy.clip_norm must be positive, got {self.clip_norm}")
        if self.patches_per_image < 1:
            raise ValueError(f"privacy.patches_per_image must be >= 1, got {self.patches_per_image}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"privacy.projection_dim must be >= 1 or null, got {self.projection_dim}")

    @classmethod
    def from_parameters(cls, block: Mapping[str, Any] | None, seed: int) -> PrivacySettings:
        block = dict(block or {})
        unknown = sorted(set(block) - set(SETTING_KEYS))
        if unknown:
            raise ValueError(f"privacy: unknown keys {unknown}; expected some of {list(SETTING_KEYS)}")
        defaults = cls()
        projection = block.get("projection_dim")
        noise_seed = block.get("noise_seed")
        return cls(
            enabled=bool(block.get("enabled", False)),
            epsilon=float(block.get("epsilon", defaults.epsilon)),
            delta=float(block.get("delta", defaults.delta)),
            clip_norm=float(block.get("clip_norm", defaults.clip_norm)),
            patches_per_image=int(block.get("patches_per_image", defaults.patches_per_image)),
            projection_dim=None if projection is None else int(projection),
            unit=str(block.get("unit", defaults.unit)),
            accountant=str(block.get("accountant", defaults.accountant)),
            noise_seed=None if noise_seed is None else int(noise_seed),
            seed=int(seed),
            audit=AuditSettings.from_parameters(block.get("audit")),
            mechanism=str(block.get("mechanism", defaults.mechanism)),
        )

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the whole release to replacing one unit: 2C√m (image) or 2C (patch)."""
        per_vector = 2.0 * self.clip_norm
        return per_vector * math.sqrt(self.patches_per_image) if self.unit == "image" else per_vector

    @property
    def releases(self) -> int:
        """Releases of fresh data per client: one (later rounds post-process the released rows)."""
        return 1

    @property
    def noise_multiplier(self) -> float:
        return noise_multiplier_for(self.epsilon, self.delta, self.accountant, steps=self.releases)

    @property
    def sigma(self) -> float:
        """Standard deviation of the Gaussian noise added to every coordinate of every released row."""
        return self.noise_multiplier * self.sensitivity if self.enabled else 0.0

    def ledger(self) -> PrivacyLedger:
        """The client's ledger holding this release (DP-trained models add their own entries)."""
        ledger = PrivacyLedger(self.accountant, self.delta)
        if self.enabled:
            ledger.record("patch_release", self.sigma / self.sensitivity, 1.0, self.releases)
        return ledger

    def budget(self, n_units: Mapping[str, int] | None = None) -> dict[str, Any]:
        """JSON-ready: what this release spends (``epsilon`` null = no guarantee at all)."""
        if not self.enabled:
            return {
                "enabled": False,
                "epsilon": None,
                "delta": None,
                "unit": None,
                "sigma": 0.0,
                "patches_per_image": None,
                "clip_norm": None,
                "rounds": 0,
                "accountant": None,
            }
        budget = {
            "enabled": True,
            # Computed back from σ by the accountant (at most the target, by the search tolerance).
            "epsilon": self.ledger().epsilon(),
            "delta": self.delta,
            "unit": self.unit,
            "sigma": self.sigma,
            "patches_per_image": self.patches_per_image,
            "clip_norm": self.clip_norm,
            "rounds": self.releases,
            "accountant": self.accountant,
            "target_epsilon": self.epsilon,
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
            "neighbouring": f"{NEIGHBOURING} {self.unit}",
            "projection_dim": self.projection_dim,
            "noise_seed_fixed": self.noise_seed is not None,
        }
        if n_units is not None:
            budget["n_images"] = {c: int(n) for c, n in n_units.items()}
            per_unit = self.patches_per_image if self.unit == "patch" else 1
            smallest = min((n * per_unit for n in n_units.values()), default=0)
            if smallest and self.delta >= 1.0 / (10 * smallest):
                logger.warning(
                    "privacy.delta=%g is not small against the %d %ss of the smallest category (want << 1/n)",
                    self.delta,
                    smallest,
                    self.unit,
                )
        return budget


def release_parameters(block: Mapping[str, Any] | None) -> dict[str, Any]:
    """What of the ``privacy`` block changes the released rows (variants equal here share lanes)."""
    block = dict(block or {})
    if block.get("mechanism", "rows") != "rows":  # another mechanism releases no rows: never the same lane
        return {k: v for k, v in block.items() if k != "audit"}
    if not block.get("enabled", False):
        return {"enabled": False}
    return {k: v for k, v in block.items() if k != "audit"}


# --------------------------------------------------------------------------- the public map


@dataclass(frozen=True)
class PublicTransform:
    """The data-independent map every patch vector goes through before it meets the bank.

    Projection (optional, seeded by the run's seed: public) then clipping to ``clip_norm``. The
    client applies it before the noise; scoring and the audit apply it to test patches, so the
    released rows and the vectors compared with them live in the same space.
    """

    clip_norm: float
    matrix: np.ndarray | None = None  # (d, projection_dim) float32

    def output_dim(self, dim: int) -> int:
        return int(self.matrix.shape[1]) if self.matrix is not None else int(dim)

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """``(..., d)`` -> ``(..., d')`` float32, every vector's L2 norm at most ``clip_norm``."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.matrix is not None:
            vectors = vectors @ self.matrix
        return clip_rows(vectors, self.clip_norm)


def public_transform(settings: PrivacySettings, dim: int) -> PublicTransform | None:
    """The map for vectors of dimension ``dim`` (None when privacy is disabled: vectors stay as they are)."""
    if not settings.enabled or settings.mechanism != "rows":  # a DP-CVAE's bank lives in the backbone's space
        return None
    matrix = None
    if settings.projection_dim is not None:
        matrix = random_projection_matrix(int(dim), settings.projection_dim, derive_seed(settings.seed, "privacy_projection"))
    return PublicTransform(settings.clip_norm, matrix)


def clip_rows(vectors: np.ndarray, clip_norm: float) -> np.ndarray:
    """Every vector (last axis) longer than ``clip_norm`` scaled down to it (float32 copy).

    Clipped vectors land a relative 1e-6 inside the ball, so float32 rounding never leaves one
    above ``clip_norm``; shorter vectors are returned unchanged.
    """
    vectors = np.array(vectors, dtype=np.float32, copy=True)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=-1, keepdims=True)
    long = norms > float(clip_norm)
    scale = np.where(long, float(clip_norm) * (1.0 - 1e-6) / np.where(long, norms, 1.0), 1.0)
    vectors *= scale.astype(np.float32)
    return vectors


class TransformedEmbedder:
    """A :class:`~fedpatchcore.core.features.embedding.PatchEmbedder` whose patch vectors go through a public map."""

    def __init__(self, embedder: Any, transform: PublicTransform) -> None:
        self.embedder = embedder
        self.transform = transform

    @property
    def feature_dim(self) -> int:
        return self.transform.output_dim(self.embedder.feature_dim)

    def grid_size(self, image_size):
        return self.embedder.grid_size(image_size)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.transform(self.embedder.embed(images))


def with_public_transform(embedder: Any, settings: PrivacySettings) -> Any:
    """``embedder`` itself when privacy is disabled, else the same embedder followed by the public map."""
    transform = public_transform(settings, embedder.feature_dim)
    return embedder if transform is None else TransformedEmbedder(embedder, transform)


# --------------------------------------------------------------------------- the release


@dataclass
class ReleasedRows:
    """A category's released rows and, kept on the site, where each came from."""

    rows: np.ndarray  # (n_images * m, d') float32: clipped + noised, in a random order
    source: np.ndarray  # (n_images * m, 3) int64: (image index, y, x)


def choose_positions(grid: tuple[int, int], count: int, seed: int, client_id: str, image_key: str) -> np.ndarray:
    """``count`` distinct patch positions (flat, sorted) of one image, from public values only."""
    n_positions = int(grid[0]) * int(grid[1])
    rng = derive_rng(seed, "privacy_positions", str(client_id), str(image_key))
    return np.sort(rng.choice(n_positions, size=min(int(count), n_positions), replace=False)).astype(np.int64)


def noise_generator(settings: PrivacySettings, client_id: str, category: str) -> np.random.Generator:
    """Fresh OS entropy (``noise_seed: null``) or, for reproducible experiments, a derived stream."""
    if settings.noise_seed is None:
        return np.random.default_rng()
    return derive_rng(settings.noise_seed, "privacy_noise", str(client_id), str(category))


def release_category(
    feature_file: Any,
    image_keys: Sequence[str],
    grid: tuple[int, int],
    settings: PrivacySettings,
    client_id: str,
    category: str,
) -> ReleasedRows:
    """The DP release of one category of one client.

    ``feature_file`` holds the category's patch vectors image by image (``grid`` positions each,
    row-major, in ``image_keys`` order): a :class:`~fedpatchcore.core.features.feature_store.PatchFeatureFile`
    or anything with ``gather(rows)`` and ``dim``. Only the chosen rows are read.
    """
    if not settings.enabled:
        raise ValueError("release_category needs privacy.enabled")
    per_image = int(grid[0]) * int(grid[1])
    transform = public_transform(settings, feature_file.dim)
    rng = noise_generator(settings, client_id, category)
    sigma = settings.sigma
    rows_out, sources = [], []
    for start in range(0, len(image_keys), _IMAGES_PER_CHUNK):
        keys = image_keys[start : start + _IMAGES_PER_CHUNK]
        positions = [choose_positions(grid, settings.patches_per_image, settings.seed, client_id, k) for k in keys]
        rows = np.concatenate([(start + i) * per_image + p for i, p in enumerate(positions)])
        released = transform(feature_file.gather(rows))
        released += rng.normal(0.0, sigma, size=released.shape).astype(np.float32)
        rows_out.append(released)
        image = rows // per_image
        sources.append(np.stack([image, (rows % per_image) // grid[1], rows % grid[1]], axis=1))
    rows_all = np.concatenate(rows_out) if rows_out else np.empty((0, transform.output_dim(feature_file.dim)), np.float32)
    source_all = np.concatenate(sources) if sources else np.empty((0, 3), np.int64)
    # A public random order: the output depends on the multiset of images, not on their names.
    order = derive_rng(settings.seed, "privacy_order", str(client_id), str(category)).permutation(len(rows_all))
    return ReleasedRows(np.ascontiguousarray(rows_all[order]), source_all[order].astype(np.int64))
