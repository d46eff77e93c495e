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
* ``unit: patch``: one patch vector, ``Δ₂ = 2C``. An image's m patches then all change: the
  same Gaussian release with sensitivity 2C√m, whose ε (:meth:`PrivacySettings.image_epsilon`,
  from the accountant) is what protects an image (4.66 for ε_patch = 1 at m = 16, far below the
  group-privacy bound m·ε).

**σ from ε** comes from a maintained accountant, never from a formula written here: Opacus'
``get_noise_multiplier`` with its RDP or PRV accountant, or dp-accounting's analytic Gaussian
(Balle & Wang 2018); σ = noise multiplier × Δ₂. The ε reported is computed back from σ by the
same accountant. Each client releases its rows once; rounds r > 1 re-select among rows already
released (post-processing), so ``rounds`` in the budget is 1. Every release is charged to the
site's persistent ledger (:mod:`.ledger`) before it is made: the variants of a run, re-runs and
retries of the same images compose there, and the budget published is the composed one.

**Randomness.** Positions and the projection derive from the run's ``seed``: they are public and
may be. The noise must not be reproducible by whoever knows the parameters: it comes from fresh
OS entropy. A fixed ``privacy.noise_seed`` is refused unless ``reproducible_not_private: true``
(every budget then says ``private: false``), and even then each release draws its own stream
(:func:`noise_generator`), so no two releases share noise. numpy's generator is not a
cryptographic one and floating-point Gaussian sampling has known side channels (Jin et al.
2022); a deployment should sample the noise with a CSPRNG.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedpatchcore.core.common.seeding import derive_rng, derive_seed
from fedpatchcore.core.coreset.kcenter import greedy_kcenter
from fedpatchcore.core.features.projection import random_projection_matrix
from fedpatchcore.core.privacy.accounting import ACCOUNTANTS, PrivacyLedger, noise_multiplier_for
from fedpatchcore.core.privacy.audit import CanaryAuditSettings, canary_audit, canary_inputs
from fedpatchcore.core.privacy.ledger import Mechanism, SiteLedger, Spent, image_set_id
from fedpatchcore.core.privacy.secure_sum import SecureAggregationSettings, noise_share
from fedpatchcore.core.privacy.summary import (
    Statistics,
    SummaryCategory,
    SummarySettings,
    feature_file_statistics,
    image_statistics,
    lloyd_update,
)

logger = logging.getLogger(__name__)

UNITS = ("image", "patch")
MECHANISMS = ("rows", "summary")
NEIGHBOURING = "replace-one"
# Keys of the ``privacy`` block (``audit`` is read by the membership-inference audit only).
SETTING_KEYS = (
    "enabled",
    "mechanism",
    "epsilon",
    "delta",
    "clip_norm",
    "patches_per_image",
    "projection_dim",
    "unit",
    "accountant",
    "noise_seed",
    "reproducible_not_private",
    "max_epsilon",
    "ledger_dir",
    "summary",
    "secure_aggregation",
    "canary_audit",
    "audit",
)
# Of those, what changes neither the released values nor who is charged for them.
_NOT_RELEASE = ("audit", "canary_audit", "ledger_dir", "max_epsilon")
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
    """The ``privacy`` parameter block, checked; ``seed`` is the run's (positions, projection).

    ``mechanism``: what a client releases, ``rows`` (clipped, noised patch vectors at public
    positions) or ``summary`` (DP-Lloyd sums of public centres, :mod:`.summary`). With
    ``enabled: false`` the rows mechanism is the plain coreset of raw rows and the summary is
    computed without noise (the non-private reference of the same bank).
    """

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
    reproducible_not_private: bool = False
    max_epsilon: float | None = None
    ledger_dir: str | None = None
    summary: SummarySettings = SummarySettings()
    secure_aggregation: SecureAggregationSettings = SecureAggregationSettings()
    canary_audit: CanaryAuditSettings = CanaryAuditSettings()

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"privacy.unit must be one of {list(UNITS)}, got {self.unit!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"privacy.accountant must be one of {list(ACCOUNTANTS)}, got {self.accountant!r}")
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"privacy.mechanism must be one of {list(MECHANISMS)}, got {self.mechanism!r}")
        if self.noise_seed is not None and not self.reproducible_not_private:
            raise ValueError(
                "privacy.noise_seed is set: whoever knows it can subtract the noise, and two releases "
                "drawn from it can be solved for the raw rows. Leave it null (noise from OS entropy), or "
                "set privacy.reproducible_not_private: true to accept that (every published budget then says "
                "private: false)"
            )
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ValueError(f"privacy.max_epsilon must be positive or null, got {self.max_epsilon}")
        if self.mechanism == "summary" and self.unit != "image":
            raise ValueError("privacy.mechanism summary protects whole images: privacy.unit must be image")
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
        max_epsilon = block.get("max_epsilon")
        ledger_dir = block.get("ledger_dir")
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
            reproducible_not_private=bool(block.get("reproducible_not_private", False)),
            max_epsilon=None if max_epsilon is None else float(max_epsilon),
            ledger_dir=None if ledger_dir is None else str(ledger_dir),
            summary=SummarySettings.from_parameters(block.get("summary")),
            secure_aggregation=SecureAggregationSettings.from_parameters(block.get("secure_aggregation")),
            canary_audit=CanaryAuditSettings.from_parameters(block.get("canary_audit")),
        )

    @property
    def private(self) -> bool:
        """Whether a release under these settings carries a guarantee (noise not reproducible)."""
        return self.enabled and not self.reproducible_not_private

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of one release step to replacing one unit.

        rows: 2C√m (image) or 2C (patch); summary: 2B per round (:mod:`.summary`).
        """
        if self.mechanism == "summary":
            return self.summary.sensitivity
        per_vector = 2.0 * self.clip_norm
        return per_vector * math.sqrt(self.patches_per_image) if self.unit == "image" else per_vector

    @property
    def image_sensitivity(self) -> float:
        """What replacing one *image* can move one release step (for a patch unit: its m vectors)."""
        if self.mechanism == "rows" and self.unit == "patch":
            return 2.0 * self.clip_norm * math.sqrt(self.patches_per_image)
        return self.sensitivity

    @property
    def releases(self) -> int:
        """Gaussian releases of fresh statistics per client.

        rows: one (later rounds post-process the released rows); summary: one per DP-Lloyd round.
        """
        return self.summary.rounds if self.mechanism == "summary" else 1

    @property
    def noise_multiplier(self) -> float:
        if self.releases == 0:
            return 0.0
        return noise_multiplier_for(self.epsilon, self.delta, self.accountant, steps=self.releases)

    @property
    def sigma(self) -> float:
        """Standard deviation of the Gaussian noise added to every released coordinate."""
        return self.noise_multiplier * self.sensitivity if self.enabled else 0.0

    def mechanisms(self) -> list[Mechanism]:
        """This release for the ledger, per image: σ over the image sensitivity, over its steps."""
        if not self.enabled or self.releases == 0:
            return []
        name = f"{self.mechanism}_release"
        return [Mechanism(name, self.sigma / self.image_sensitivity, 1.0, self.releases)]

    def ledger(self) -> PrivacyLedger:
        """The client's in-memory composition of this release (DP-trained models add their own entries)."""
        ledger = PrivacyLedger(self.accountant, self.delta)
        if self.enabled and self.releases:
            ledger.record(f"{self.mechanism}_release", self.sigma / self.sensitivity, 1.0, self.releases)
        return ledger

    def site_ledger(self, site: str) -> SiteLedger:
        """The persistent ledger of ``site`` (in memory when ``ledger_dir`` is null)."""
        return SiteLedger(self.ledger_dir, site, self.accountant, self.delta, self.max_epsilon)

    def image_epsilon(self) -> float:
        """ε of this release for a whole image, from the accountant (exact: no group-privacy bound).

        For ``unit: patch`` an image's m vectors all change: the same Gaussian release with
        sensitivity 2C√m, i.e. noise multiplier z/√m.
        """
        if not self.enabled or self.releases == 0:
            return 0.0
        return PrivacyLedger(self.accountant, self.delta).epsilon([m.entry() for m in self.mechanisms()])

    def release_id(self, *labels: str) -> str | None:
        """Same id for the same reproducible release (recorded once); None for fresh OS-entropy noise."""
        if self.noise_seed is None:
            return None
        text = json.dumps([self.fingerprint(), self.noise_seed, *map(str, labels)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def fingerprint(self) -> str:
        """The settings that change released values (what tells two releases apart)."""
        values = {k: v for k, v in asdict(self).items() if k not in _NOT_RELEASE}
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def budget(self, n_units: Mapping[str, int] | None = None, spent: Spent | None = None) -> dict[str, Any]:
        """JSON-ready: what this release spends (``epsilon`` null = no guarantee at all).

        ``epsilon`` is the composed, per-image ε of everything the site's ledger holds for these
        images (``spent``, after this release); without ``spent`` it is this release alone.
        ``release_epsilon`` is this release alone in its own unit; ``release_image_epsilon``
        the same per image (the exact composition for ``unit: patch``, not m·ε).
        """
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
        release_epsilon = self.ledger().epsilon()
        image_epsilon = self.image_epsilon()
        budget = {
            "enabled": True,
            "epsilon": image_epsilon if spent is None else float(spent.epsilon),
            "delta": self.delta,
            "unit": self.unit,
            "sigma": self.sigma,
            "patches_per_image": self.patches_per_image,
            "clip_norm": self.clip_norm,
            "rounds": self.releases,
            "accountant": self.accountant,
            "mechanism": self.mechanism,
            "private": self.private and (spent is None or spent.private),
            # This release alone, computed back from σ by the accountant (at most the target).
            "release_epsilon": release_epsilon,
            "release_image_epsilon": image_epsilon,
            "releases_composed": 1 if spent is None else len(spent.releases),
            "target_epsilon": self.epsilon,
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
            "neighbouring": f"{NEIGHBOURING} {self.unit}",
            "projection_dim": self.projection_dim,
            "noise_seed_fixed": self.noise_seed is not None,
        }
        if self.mechanism == "summary":
            budget.update(
                {
                    "centres": self.summary.centres,
                    "residual_clip": self.summary.residual_clip,
                    "contribution_clip": self.summary.contribution_clip,
                }
            )
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
    """What of the ``privacy`` block changes the released rows (variants equal here share lanes).

    A disabled rows release is the raw coreset whatever its other keys; a disabled summary is
    still a summary (computed without noise), so its settings matter.
    """
    block = dict(block or {})
    if not block.get("enabled", False):
        if block.get("mechanism", "rows") == "rows":
            return {"enabled": False}
        return {"enabled": False, "mechanism": block["mechanism"], "summary": block.get("summary"), "projection_dim": block.get("projection_dim")}
    return {k: v for k, v in block.items() if k not in _NOT_RELEASE}


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
    """The map for vectors of dimension ``dim`` (None: vectors stay as they are).

    rows: projection then clipping when private, nothing otherwise (the raw coreset). summary:
    the projection alone, private or not (its clipping acts on residuals and on each image's
    contribution, :mod:`.summary`); None without a projection.
    """
    summary = settings.mechanism == "summary"
    if not settings.enabled and not summary:
        return None
    if summary and settings.projection_dim is None:
        return None
    matrix = None
    if settings.projection_dim is not None:
        matrix = random_projection_matrix(int(dim), settings.projection_dim, derive_seed(settings.seed, "privacy_projection"))
    return PublicTransform(math.inf if summary else settings.clip_norm, matrix)


def clip_rows(vectors: np.ndarray, clip_norm: float) -> np.ndarray:
    """Every vector (last axis) longer than ``clip_norm`` scaled down to it (float32 copy).

    Clipped vectors land a relative 1e-6 inside the ball, so float32 rounding never leaves one
    above ``clip_norm``; shorter vectors are returned unchanged.
    """
    vectors = np.array(vectors, dtype=np.float32, copy=True)
    if math.isinf(clip_norm):
        return vectors
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


def noise_generator(settings: PrivacySettings, *labels: str) -> np.random.Generator:
    """Fresh OS entropy (``noise_seed: null``) or, with ``reproducible_not_private``, a derived stream.

    A derived stream depends on the seed, on every setting that changes released values
    (:meth:`PrivacySettings.fingerprint`: ε, unit, mechanism ...) and on ``labels`` (client,
    category, the released images, the round), so two different releases never share noise:
    a = x + σ_A·z and b = x + σ_B·z would give x back.
    """
    if settings.noise_seed is None:
        return np.random.default_rng()
    if not settings.reproducible_not_private:
        raise ValueError("a fixed privacy.noise_seed needs privacy.reproducible_not_private: true")
    return derive_rng(settings.noise_seed, "privacy_noise", settings.fingerprint(), *map(str, labels))


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
    rng = noise_generator(settings, client_id, category, image_set_id(image_keys))
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


def rows_upload_mechanism(settings: PrivacySettings, coreset_ratio: float, seed: int) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """The rows release and the local coreset after it, as ``(vectors, rng) -> upload`` for the canary audit.

    ``vectors``: ``(n, m, d)`` patch vectors at the public positions, already through the public
    projection; what comes out is what the server receives: clipped, noised rows in the public
    order, then the k-center coreset of them (post-processing). Noise from ``rng``.
    """
    sigma = settings.sigma

    def upload(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = clip_rows(np.asarray(vectors).reshape(-1, np.asarray(vectors).shape[-1]), settings.clip_norm)
        rows += rng.normal(0.0, sigma, size=rows.shape).astype(np.float32)
        rows = rows[derive_rng(seed, "privacy_order", "canary_audit").permutation(len(rows))]
        k = max(1, int(round(coreset_ratio * len(rows))))
        return rows[greedy_kcenter(rows, k, projection_dim=None, seed=seed)]

    return upload


# --------------------------------------------------------------------------- the summary release


def summary_statistics(
    files: Mapping[str, Any],
    n_images: Mapping[str, int],
    grid: Mapping[str, tuple[int, int]],
    centres: Mapping[str, np.ndarray],
    settings: PrivacySettings,
) -> dict[str, Statistics]:
    """A site's exact DP-Lloyd sums per category (no noise yet: they never leave the site as they are).

    ``files``: category -> its feature file (every patch of every image, image by image);
    every patch position of an image counts (the contribution is clipped as a whole).
    """
    out = {}
    for category, feature_file in files.items():
        if category not in centres:
            raise KeyError(f"no public centres for category '{category}'")
        transform = public_transform(settings, feature_file.dim)
        per_image = int(grid[category][0]) * int(grid[category][1])
        out[category] = feature_file_statistics(
            feature_file, int(n_images[category]), per_image, np.asarray(centres[category]), settings.summary, transform
        )
    return out


def summary_share(
    statistics: Mapping[str, Statistics],
    settings: PrivacySettings,
    holders: Mapping[str, int],
    *,
    client_id: str,
    round_number: int,
    image_keys: Mapping[str, Sequence[str]],
) -> dict[str, np.ndarray]:
    """What a site sends for a round: per category its sums plus its share of the noise.

    ``holders``: category -> how many clients hold it (public: the partition's image counts),
    so that the shares of the clients of a category add up to σ² (:mod:`.secure_sum`).
    Without privacy the sums go as they are (the non-private reference).
    """
    out = {}
    for category, stats in statistics.items():
        vector = stats.to_vector()
        if settings.enabled:
            rng = noise_generator(settings, client_id, category, image_set_id(image_keys[category]), f"round_{round_number}")
            vector = noise_share(
                vector, settings.sigma, int(holders[category]), settings.secure_aggregation.max_dropouts, rng
            )
        out[category] = vector
    return out


def charge_release(
    settings: PrivacySettings, site: str, image_keys: Mapping[str, Sequence[str]], label: str
) -> dict[str, Spent]:
    """Record this release of every category's images in the site's ledger before it is made.

    Refused (:class:`~fedpatchcore.core.privacy.ledger.BudgetExceeded`) past ``max_epsilon``;
    nothing is recorded for a disabled release. Returns the composed budget per category.
    """
    if not settings.enabled or not settings.mechanisms():
        return {}
    ledger = settings.site_ledger(site)
    return {
        category: ledger.charge(
            keys,
            settings.mechanisms(),
            label=f"{label} {category}: {settings.mechanism}, {settings.unit} ε={settings.epsilon:g}",
            private=settings.private,
            release_id=settings.release_id(site, category, image_set_id(keys)),
        )
        for category, keys in image_keys.items()
    }


def most_exposed(spent: Mapping[str, Spent]) -> Spent | None:
    """The category whose images have spent the most (what a site's budget reports)."""
    return max(spent.values(), key=lambda s: s.epsilon, default=None)


def summary_upload_mechanism(
    settings: PrivacySettings, centres: np.ndarray
) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """The summary rounds of one category as ``(vectors, rng) -> released sums`` for the canary audit.

    ``vectors``: ``(n, P, d)`` patch vectors in the space of the public ``centres``; what comes out
    is every round's pooled noisy sums, concatenated (what the server receives), each round's
    centres moved by the server's update of the previous one.
    """
    sigma, summary = settings.sigma, settings.summary

    def release(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        state = SummaryCategory(
            np.asarray(centres, dtype=np.float32), np.full(len(centres), summary.residual_clip, np.float32), np.ones(len(centres))
        )
        released = []
        for _ in range(max(1, summary.rounds)):
            stats = image_statistics(vectors, state.centres, summary.residual_clip, summary.contribution_clip).to_vector()
            noisy = stats + (rng.normal(0.0, sigma, size=stats.shape) if sigma > 0 else 0.0)
            released.append(noisy)
            pooled = Statistics.from_vector(noisy, len(state.centres), state.centres.shape[1])
            state, _ = lloyd_update(state, pooled, sigma, summary)
        return np.concatenate(released)

    return release


# --------------------------------------------------------------------------- evidence


def composed_budget(budget: Mapping[str, Any], settings: PrivacySettings, site: str, keys: Sequence[str]) -> dict[str, Any]:
    """``budget`` with ``epsilon`` = what the site's ledger now holds for its most exposed image.

    Read after every release of the run (the variants, the centralized baseline), so the
    published ε is the composed one. Unchanged for a disabled release or an in-memory ledger.
    """
    budget = dict(budget)
    if not budget.get("enabled") or settings.ledger_dir is None:
        return budget
    spent = settings.site_ledger(site).spent(keys)
    budget.update(
        {
            "epsilon": float(spent.epsilon),
            "releases_composed": len(spent.releases),
            "private": bool(budget.get("private", True)) and spent.private,
            "ledger": str(settings.site_ledger(site).path),
        }
    )
    return budget


def publish_budgets(
    run_summary: Mapping[str, Any],
    settings: PrivacySettings,
    budgets: Sequence[Mapping[str, Any]],
    client_ids: Sequence[str],
    holdings: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """``clients.<id>.privacy`` for every client, and ``experiment`` columns when private.

    ``holdings`` (client -> its image keys): each budget's ``epsilon`` becomes the composed ε
    the site's ledger holds for its images (:func:`composed_budget`). The experiment gets
    ``sigma``, ``composed_epsilon`` (the most exposed site) and ``private``.
    """
    summary = {**run_summary, "clients": {cid: dict(values) for cid, values in run_summary["clients"].items()}}
    published = []
    for client_id, budget in zip(client_ids, budgets, strict=True):
        if holdings is not None:
            budget = composed_budget(budget, settings, client_id, holdings.get(client_id, []))
        published.append(dict(budget))
        summary["clients"].setdefault(client_id, {})["privacy"] = dict(budget)
    if settings.enabled:
        summary["experiment"] = {
            **summary.get("experiment", {}),
            "sigma": max(float(b["sigma"]) for b in published),
            "composed_epsilon": max(float(b["epsilon"]) for b in published),
            "private": all(bool(b.get("private", True)) for b in published),
        }
    return summary


def audit_release(settings: PrivacySettings, coreset_ratio: float, seed: int) -> dict[str, Any]:
    """The canary audit of this variant's mechanism on small public inputs (``privacy.canary_audit``).

    rows: the release and the local k-center after it (what the server receives); summary: every
    round's pooled sums around public centres. The claim is the release's per-image ε (None when
    disabled: the bound then shows what the audit can see of an unprotected release).
    """
    audit = settings.canary_audit
    per_image = settings.patches_per_image
    if settings.mechanism == "summary":
        scale = settings.summary.residual_clip
        without, with_canary = canary_inputs(audit.images, per_image, audit.dim, scale, seed)
        public = canary_inputs(audit.images, per_image, audit.dim, scale, derive_seed(seed, "canary_centres"))[0]
        public = public.reshape(-1, public.shape[-1])
        k = min(settings.summary.centres, len(public))
        centres = public[greedy_kcenter(public, k, projection_dim=None, seed=seed)]
        mechanism = summary_upload_mechanism(settings, centres)
    else:
        without, with_canary = canary_inputs(audit.images, per_image, audit.dim, settings.clip_norm, seed)
        mechanism = rows_upload_mechanism(settings, coreset_ratio, seed)
    result = canary_audit(
        mechanism,
        without,
        with_canary,
        trials=audit.trials,
        delta=settings.delta,
        claimed_epsilon=settings.image_epsilon() if settings.enabled else None,
        seed=seed,
    )
    return {"enabled": True, "mechanism": settings.mechanism, **result.describe()}
