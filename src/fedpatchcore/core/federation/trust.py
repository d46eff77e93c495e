"""How far the server trusts each client: T = α·Q + β·R + γ·C in [0, 1].

Computed only from what the server may see (the uploaded rows) and what a client can report
without sending images (two numbers per category about its own pictures). Every term is
relative to the client's peers, the other clients holding the same category, so it needs an
honest majority among them; a category only one client holds gives that client the neutral 1.

* **Q, quality** (self-reported): each client measures, on its own training images, sharpness
  (variance of the Laplacian) and noise (Immerkær's estimate of the pixel-noise std) and
  reports the per-category means. Q = min(1, sharpness / peers' median) · min(1, peers' median
  noise / noise). Fooled by: a client that lies about its numbers; products that are
  legitimately smoother or grainier than their peers' (the comparison is per category, not per
  product variant); a majority of degraded peers. Blind to label noise and to colour casts.
* **R, reliability**: for each uploaded row, the distance to the nearest row of any other
  client holding the category, against the client's own nearest-neighbour scale (the median
  distance between its rows); R = share of rows within ``confirm_factor`` of that scale.
  Catches rows nobody else has seen (defective patches in a "good" folder, another camera).
  Fooled by: colluding clients that upload the same wrong rows; a site that legitimately sees a
  rare variant nobody else has; a client whose own scale is inflated by noise (Q covers that).
* **C, consistency**: maximum mean discrepancy (RBF kernel, median-distance bandwidth) between
  the client's rows and the other clients' rows of the category, against the peers' median:
  C = min(1, peers' median MMD² / own MMD²). Catches a shifted distribution as a whole (domain
  shift) even when each row has some neighbour. Fooled by: a poisoner who adds a few rows to an
  otherwise normal bank (the distribution barely moves; R catches it); non-iid partitions where
  clients hold genuinely different parts of a category's variation.

The weights α, β, γ (``trust.alpha/beta/gamma``) are normalised to sum to 1. A client whose T
is under ``trust.min_trust`` is excluded; the ``trust`` strategy weighs the others' quotas by T.
Rows are subsampled to ``trust.max_rows`` per client and category so the cost stays bounded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fedpatchcore.core.banks import ClientUpload
from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.federation.aggregation import confirmed_rows
from fedpatchcore.core.privacy.generative import CONSISTENCY, RECONSTRUCTION

logger = logging.getLogger(__name__)

SHARPNESS = "quality.sharpness"
NOISE = "quality.noise"
_IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


# --------------------------------------------------------------------------- client side


def measure_image_quality(image: np.ndarray) -> tuple[float, float]:
    """(sharpness, noise) of a uint8 RGB image: variance of the Laplacian and Immerkær's noise std."""
    gray = np.asarray(image, dtype=np.float64).mean(axis=2)
    sharpness = float(ndimage.laplace(gray).var())
    height, width = gray.shape
    if height < 3 or width < 3:
        return sharpness, 0.0
    response = np.abs(ndimage.convolve(gray, _IMMERKAER, mode="reflect"))[1:-1, 1:-1]
    noise = math.sqrt(math.pi / 2.0) * response.sum() / (6.0 * (width - 2) * (height - 2))
    return sharpness, float(noise)


@dataclass
class QualityMeter:
    """Accumulates a client's per-category image quality; ``numbers()`` is what it reports."""

    sums: dict[str, np.ndarray]

    def __init__(self) -> None:
        self.sums = {}

    def add(self, category: str, image: np.ndarray) -> None:
        sharpness, noise = measure_image_quality(image)
        total = self.sums.setdefault(category, np.zeros(3))
        total += (sharpness, noise, 1.0)

    def numbers(self) -> dict[str, float]:
        out = {}
        for category, (sharpness, noise, count) in sorted(self.sums.items()):
            out[f"{SHARPNESS}.{category}"] = float(sharpness / count)
            out[f"{NOISE}.{category}"] = float(noise / count)
        return out


# --------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class TrustSettings:
    alpha: float = 1.0  # weight of Q
    beta: float = 1.0  # weight of R
    gamma: float = 1.0  # weight of C
    min_trust: float = 0.5  # clients under this trust are excluded
    confirm_factor: float = 1.0  # R: a row is confirmed within this many own-NN scales of another client's row
    max_rows: int = 2000  # rows per client and category used for R and C (seeded subsample)
    seed: int = 0

    def __post_init__(self) -> None:
        weights = (self.alpha, self.beta, self.gamma)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"trust.alpha, trust.beta, trust.gamma must be >= 0 and not all 0, got {weights}")
        if not 0.0 <= self.min_trust <= 1.0:
            raise ValueError(f"trust.min_trust must lie in [0, 1], got {self.min_trust}")
        if self.confirm_factor <= 0 or self.max_rows < 2:
            raise ValueError("trust.confirm_factor must be > 0 and trust.max_rows >= 2")

    @classmethod
    def from_parameters(cls, trust: Mapping | None, seed: int) -> TrustSettings:
        trust = dict(trust or {})
        return cls(**{k: trust[k] for k in ("alpha", "beta", "gamma", "min_trust", "confirm_factor", "max_rows") if k in trust}, seed=int(seed))


def _sample(rows: np.ndarray, max_rows: int, seed: int, *labels) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if len(rows) <= max_rows:
        return rows
    keep = np.sort(derive_rng(seed, "trust", *labels).choice(len(rows), size=max_rows, replace=False))
    return rows[keep]


def mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Biased MMD² between two row sets, RBF kernel with the median pairwise distance as bandwidth."""
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    pooled = np.concatenate([x64, y64])
    sq = np.maximum((pooled**2).sum(1)[:, None] + (pooled**2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0.0)
    bandwidth2 = float(np.median(sq[np.triu_indices(len(pooled), 1)])) or 1.0
    kernel = np.exp(-sq / bandwidth2)
    n = len(x64)
    return float(kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean())


def _peer_ratio(values: Mapping[str, float], higher_is_better: bool) -> dict[str, float]:
    """min(1, value / peers' median) (or its inverse): 1 unless a client is worse than the median."""
    median = float(np.median(list(values.values())))
    out = {}
    for client_id, value in values.items():
        if higher_is_better:
            out[client_id] = 1.0 if value >= median else (value / median if median > 0 else 1.0)
        else:
            out[client_id] = 1.0 if value <= median else (median / value if value > 0 else 1.0)
    return out


def _weighted_mean(per_category: Mapping[str, float], weights: Mapping[str, float]) -> float:
    if not per_category:
        return 1.0
    w = np.array([weights.get(c, 1.0) for c in per_category], dtype=np.float64)
    return float(np.dot(list(per_category.values()), w) / w.sum())


def trust_scores(uploads: Sequence[ClientUpload], settings: TrustSettings) -> dict[str, dict]:
    """Per client: ``{"trust", "quality", "reliability", "consistency", "weight", "excluded"}``."""
    quality: dict[str, dict[str, float]] = {u.client_id: {} for u in uploads}
    reliability: dict[str, dict[str, float]] = {u.client_id: {} for u in uploads}
    consistency: dict[str, dict[str, float]] = {u.client_id: {} for u in uploads}
    categories = sorted({c for u in uploads for c in u.banks})
    for category in categories:
        holders = [u for u in uploads if category in u.banks and len(u.banks[category])]
        if len(holders) < 2:
            continue
        quality_terms(category, {u.client_id: u.numbers for u in holders}, quality)
        # R and C on bounded subsamples of every holder's rows.
        rows = {u.client_id: _sample(u.banks[category], settings.max_rows, settings.seed, u.client_id, category) for u in holders}
        discrepancy = {}
        for client_id, mine in rows.items():
            others = np.concatenate([r for cid, r in rows.items() if cid != client_id])
            reliability[client_id][category] = float(confirmed_rows(mine, others, settings.confirm_factor).mean())
            discrepancy[client_id] = mmd2(mine, others)
        for client_id, ratio in _peer_ratio(discrepancy, False).items():
            consistency[client_id][category] = ratio
    sizes = {u.client_id: {c: float(len(b)) for c, b in u.banks.items()} for u in uploads}
    return combine_terms(quality, reliability, consistency, sizes, settings)


def quality_terms(category: str, numbers: Mapping[str, Mapping[str, float]], quality: dict[str, dict[str, float]]) -> None:
    """Q of ``category`` for every client reporting its image quality (``numbers``: client -> its numbers),
    written into ``quality[client][category]``; fewer than two reports leave it unset (neutral)."""
    sharp = {cid: n[f"{SHARPNESS}.{category}"] for cid, n in numbers.items() if f"{SHARPNESS}.{category}" in n}
    noise = {cid: n[f"{NOISE}.{category}"] for cid, n in numbers.items() if f"{NOISE}.{category}" in n}
    if len(sharp) >= 2 and len(noise) >= 2:
        q_sharp, q_noise = _peer_ratio(sharp, True), _peer_ratio(noise, False)
        for client_id in sharp.keys() & noise.keys():
            quality[client_id][category] = q_sharp[client_id] * q_noise[client_id]


def combine_terms(
    quality: Mapping[str, Mapping[str, float]],
    reliability: Mapping[str, Mapping[str, float]],
    consistency: Mapping[str, Mapping[str, float]],
    sizes: Mapping[str, Mapping[str, float]],
    settings: TrustSettings,
) -> dict[str, dict]:
    """T = α·Q + β·R + γ·C per client (each term its per-category values averaged with ``sizes``
    as weights; a term without values is the neutral 1), excluded under ``min_trust``."""
    weights = np.array([settings.alpha, settings.beta, settings.gamma], dtype=np.float64)
    weights /= weights.sum()
    scores = {}
    for client_id, client_sizes in sizes.items():
        terms = np.array([_weighted_mean(t.get(client_id, {}), client_sizes) for t in (quality, reliability, consistency)])
        trust = float(np.clip(np.dot(weights, terms), 0.0, 1.0))
        excluded = trust < settings.min_trust
        scores[client_id] = {
            "trust": trust,
            "quality": float(terms[0]),
            "reliability": float(terms[1]),
            "consistency": float(terms[2]),
            "weight": 0.0 if excluded else trust,
            "excluded": bool(excluded),
        }
    logger.info(
        "Trust: %s", ", ".join(f"{cid} {s['trust']:.2f}{' (excluded)' if s['excluded'] else ''}" for cid, s in scores.items())
    )
    return scores


def model_trust_scores(
    numbers: Mapping[str, Mapping[str, float]], n_images: Mapping[str, Mapping[str, int]], settings: TrustSettings
) -> dict[str, dict]:
    """Trust in clients that send models (DP-CVAE), from what they report about their held-out images.

    ``numbers``: client -> its reported numbers, per category ``report.reconstruction.<category>``
    (R: the local decoder's reconstruction error) and ``report.consistency.<category>`` (C: MMD
    of the local encoder's codes to N(0, I)), and image quality when reported (Q); ``n_images``:
    client -> training images per category (the weights of the per-category terms). Every term
    is relative to the peers holding the same category, as for row uploads: R = min(1, peers'
    median error / own), C = min(1, peers' median MMD / own). Fooled by: a client misreporting
    its numbers (they are noised, not verified), and a majority of drifted peers.
    """
    quality: dict[str, dict[str, float]] = {cid: {} for cid in numbers}
    reliability: dict[str, dict[str, float]] = {cid: {} for cid in numbers}
    consistency: dict[str, dict[str, float]] = {cid: {} for cid in numbers}
    categories = sorted({c for counts in n_images.values() for c, n in counts.items() if n})
    for category in categories:
        holders = {cid: numbers[cid] for cid in numbers if n_images.get(cid, {}).get(category)}
        if len(holders) < 2:
            continue
        quality_terms(category, holders, quality)
        for prefix, term in ((f"{RECONSTRUCTION}.{category}", reliability), (f"{CONSISTENCY}.{category}", consistency)):
            reported = {cid: float(n[prefix]) for cid, n in holders.items() if prefix in n}
            if len(reported) >= 2:
                for client_id, ratio in _peer_ratio(reported, False).items():
                    term[client_id][category] = ratio
    sizes = {cid: {c: float(n) for c, n in n_images.get(cid, {}).items() if n} for cid in numbers}
    return combine_terms(quality, reliability, consistency, sizes, settings)
