"""A canary audit that can fail: an empirical lower bound on ε from many trials of a release.

An (ε, δ)-DP release M satisfies, for neighbouring datasets D, D' and any test with false
positive rate α and false negative rate β: α + e^ε β ≥ 1 − δ and β + e^ε α ≥ 1 − δ. So a
test observed to tell M(D) from M(D') well *proves* ε ≥ log((1 − δ − β)/α). The audit:

1. D: ``images`` small public inputs (what the mechanism sees after the public positions and
   projection: ``(n, m, d)`` vectors); D': the same with image 0 replaced by a **canary**, an
   image whose vectors sit at the clip boundary along a direction no other image uses
   (:func:`canary_inputs`). Replace-one, as the guarantee is stated.
2. ``trials`` runs of the release on D and on D' (the mechanism's own noise each time). The
   attacker sees exactly the output (what the server receives) and knows D and the public
   parameters: it learns the two mean outputs on the first half of the trials and scores each
   output by its projection on their difference (the likelihood-ratio test of a Gaussian
   mechanism); the threshold is chosen on the first half too.
3. On the held-out half, Clopper–Pearson upper bounds (95% jointly: 97.5% each) on α and β
   give the lower bound ``empirical_epsilon_lb``; a real mechanism keeps it under the claimed
   ε, a broken one (σ = 0, selection on raw rows before the noise) exceeds it given enough
   trials. ``epsilon_ceiling`` is what a perfect attack would show with this many trials: a
   bound can never exceed it, so a claimed ε above it cannot be refuted by this audit.

``release`` is any callable ``(data, rng) -> array`` (rows, a summary, a DP-CVAE's samples),
so every mechanism of the project is audited the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta as beta_distribution

from fedpatchcore.core.common.seeding import derive_rng

AUDIT_KEYS = ("enabled", "trials", "images", "dim")
CONFIDENCE = 0.95


@dataclass(frozen=True)
class CanaryAuditSettings:
    """The ``privacy.canary_audit`` block."""

    enabled: bool = False
    trials: int = 400  # releases on D and as many on D' (half to learn the attack, half to measure it)
    images: int = 8  # images of the small public dataset D
    dim: int = 16  # dimension of its vectors (the canary takes one more, unused by D)

    def __post_init__(self) -> None:
        if self.trials < 20:
            raise ValueError(f"privacy.canary_audit.trials must be >= 20, got {self.trials}")
        if self.images < 2:
            raise ValueError(f"privacy.canary_audit.images must be >= 2, got {self.images}")
        if self.dim < 1:
            raise ValueError(f"privacy.canary_audit.dim must be >= 1, got {self.dim}")

    @classmethod
    def from_parameters(cls, block: Mapping[str, Any] | None) -> CanaryAuditSettings:
        block = dict(block or {})
        unknown = sorted(set(block) - set(AUDIT_KEYS))
        if unknown:
            raise ValueError(f"privacy.canary_audit: unknown keys {unknown}; expected some of {list(AUDIT_KEYS)}")
        defaults = cls()
        return cls(
            enabled=bool(block.get("enabled", False)),
            trials=int(block.get("trials", defaults.trials)),
            images=int(block.get("images", defaults.images)),
            dim=int(block.get("dim", defaults.dim)),
        )


def clopper_pearson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for a rate of ``successes`` out of ``trials``."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if successes == 0 else float(beta_distribution.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta_distribution.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


def epsilon_lower_bound(
    false_positives: int, negatives: int, false_negatives: int, positives: int, delta: float,
    confidence: float = CONFIDENCE,
) -> float:
    """The ε any (ε, δ)-DP mechanism needs to allow these error counts (0 when they prove nothing).

    Upper confidence bounds on both error rates (each at 1 − (1 − confidence)/2 one-sided,
    i.e. ``confidence`` jointly), then the larger of log((1 − δ − β̄)/ᾱ) and log((1 − δ − ᾱ)/β̄).
    """
    # Two-sided interval at level 2c - 1 has its upper end at the one-sided level c.
    one_sided = 1.0 - (1.0 - confidence) / 2.0
    alpha_high = clopper_pearson(false_positives, negatives, 2 * one_sided - 1)[1]
    beta_high = clopper_pearson(false_negatives, positives, 2 * one_sided - 1)[1]
    bounds = [0.0]
    for first, second in ((alpha_high, beta_high), (beta_high, alpha_high)):
        numerator = 1.0 - delta - second
        if numerator > 0 and first > 0:
            bounds.append(math.log(numerator / first))
    return max(bounds)


@dataclass
class CanaryAuditResult:
    claimed_epsilon: float | None
    delta: float
    empirical_epsilon_lb: float
    epsilon_ceiling: float  # the bound a perfect attack would give with these trials
    trials: int  # per dataset, both halves
    false_positive_rate: float  # on the held-out half
    false_negative_rate: float
    separation: float  # held-out mean score gap over its standard deviation (diagnostic)

    @property
    def consistent(self) -> bool:
        """The bound does not refute the claim (always true without a claim)."""
        return self.claimed_epsilon is None or self.empirical_epsilon_lb <= self.claimed_epsilon

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "consistent": self.consistent}


def canary_inputs(images: int, per_image: int, dim: int, clip_norm: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """D and D': ``(images, per_image, dim + 1)`` public vectors, image 0 replaced by the canary in D'.

    D's vectors are a tight public cluster (patch features of one product cluster too) of norm
    about ``clip_norm``/2 in the first ``dim`` coordinates; the canary's vectors are
    ``clip_norm`` (a hair inside the ball, so no clipping moves them) along the last one,
    which no image of D uses.
    """
    rng = derive_rng(seed, "canary_inputs")
    centre = rng.normal(size=dim)
    centre *= 0.5 * clip_norm / np.linalg.norm(centre)
    spread = 0.1 * clip_norm / math.sqrt(dim)
    data = np.zeros((images, per_image, dim + 1))
    data[:, :, :dim] = centre + rng.normal(0.0, spread, size=(images, per_image, dim))
    with_canary = data.copy()
    with_canary[0] = 0.0
    with_canary[0, :, dim] = clip_norm * (1.0 - 1e-6)
    return data.astype(np.float32), with_canary.astype(np.float32)


def canary_audit(
    release: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    without: np.ndarray,
    with_canary: np.ndarray,
    *,
    trials: int,
    delta: float,
    claimed_epsilon: float | None,
    seed: int,
) -> CanaryAuditResult:
    """Run ``release`` ``trials`` times on each dataset and bound ε from below (module docstring)."""
    if trials < 20:
        raise ValueError(f"the canary audit needs at least 20 trials, got {trials}")
    rng = derive_rng(seed, "canary_audit")

    def outputs(data: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(release(data, rng), dtype=np.float64).ravel() for _ in range(trials)])

    negatives, positives = outputs(without), outputs(with_canary)
    half = trials // 2
    mean_negative, mean_positive = negatives[:half].mean(0), positives[:half].mean(0)
    direction = mean_positive - mean_negative
    midpoint = (mean_positive + mean_negative) / 2

    def scores(rows: np.ndarray) -> np.ndarray:
        return (rows - midpoint) @ direction

    learn_negative, learn_positive = scores(negatives[:half]), scores(positives[:half])
    threshold = _best_threshold(learn_negative, learn_positive, delta)
    test_negative, test_positive = scores(negatives[half:]), scores(positives[half:])
    false_positives = int((test_negative > threshold).sum())
    false_negatives = int((test_positive <= threshold).sum())
    n_neg, n_pos = len(test_negative), len(test_positive)
    spread = np.sqrt((test_negative.var() + test_positive.var()) / 2)
    gap = test_positive.mean() - test_negative.mean()
    return CanaryAuditResult(
        claimed_epsilon=None if claimed_epsilon is None else float(claimed_epsilon),
        delta=float(delta),
        empirical_epsilon_lb=epsilon_lower_bound(false_positives, n_neg, false_negatives, n_pos, delta),
        epsilon_ceiling=epsilon_lower_bound(0, n_neg, 0, n_pos, delta),
        trials=int(trials),
        false_positive_rate=false_positives / n_neg,
        false_negative_rate=false_negatives / n_pos,
        separation=float(gap / spread) if spread > 0 else (math.inf if gap > 0 else 0.0),
    )


def _best_threshold(negative: np.ndarray, positive: np.ndarray, delta: float) -> float:
    """The threshold whose point estimate of ε is largest on the learning half."""
    candidates = np.unique(np.concatenate([negative, positive]))
    best, best_value = float(candidates[0]) - 1.0, -math.inf
    n_neg, n_pos = len(negative), len(positive)
    for threshold in candidates:
        alpha = ((negative > threshold).sum() + 0.5) / (n_neg + 1)
        beta = ((positive <= threshold).sum() + 0.5) / (n_pos + 1)
        value = max(math.log(max(1 - delta - beta, 1e-12) / alpha), math.log(max(1 - delta - alpha, 1e-12) / beta))
        if value > best_value:
            best, best_value = float(threshold), value
    return best
