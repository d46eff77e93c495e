"""A membership-inference attack on a released memory bank: the empirical check of the guarantee.

The attacker holds the global bank (the server, or any factory it is broadcast to) and the
public backbone, and is shown an image of a category: was it in some client's training set?
Members are the clients' training images, non-members held-out defect-free test images of the
same categories (from the same distribution). Each image's patches go through the same public
map as the released rows (:class:`~fedpatchcore.core.privacy.release.PublicTransform`), and its score
is a statistic (``min``, ``mean`` or ``max``) over its patches of the distance to the nearest
bank row, divided by the bank's own median nearest-neighbour spacing (the attacker knows the
bank, so categories become comparable); members are expected to be closer.

Without DP a member's patches are *in* the bank (distance ~0 for ``min``) and the attack
succeeds; with DP the released rows are noised and the attack should stay near chance. The
report also gives the best AUC any membership test can reach against one (ε, δ)-DP release
(the hypothesis-testing region of Kairouz et al. 2015): the audit is consistent with ε when the
attack's AUC stays below it (up to its standard error).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from fedpatchcore.core.banks.knn import build_index, nearest_distances
from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.evaluation.metrics import image_auroc
from fedpatchcore.core.features.batches import iter_image_batches

logger = logging.getLogger(__name__)

STATISTICS = ("min", "mean", "max")
TARGET_FPR = 0.01


def attack_metrics(member_scores: Sequence[float], non_member_scores: Sequence[float]) -> dict[str, float | None]:
    """AUC (higher score = member), its Hanley-McNeil standard error and the TPR at FPR ≤ 1%."""
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(non_member_scores, dtype=np.float64)
    if len(members) == 0 or len(others) == 0:
        return {"auc": None, "auc_std_error": None, "tpr_at_fpr_0.01": None}
    scores = np.concatenate([members, others])
    labels = np.concatenate([np.ones(len(members), bool), np.zeros(len(others), bool)])
    auc = float(image_auroc(scores, labels))
    fpr, tpr, _ = roc_curve(labels, scores)
    tpr_at = float(tpr[fpr <= TARGET_FPR].max())
    n1, n2 = len(members), len(others)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n2 - 1) * (q2 - auc**2)) / (n1 * n2)
    return {"auc": auc, "auc_std_error": float(math.sqrt(max(variance, 0.0))), "tpr_at_fpr_0.01": tpr_at}


def dp_auc_bound(epsilon: float | None, delta: float | None, grid: int = 20001) -> float:
    """The largest AUC of any test telling two neighbouring datasets apart from an (ε, δ)-DP output.

    A test with false-positive rate α has true-positive rate at most
    ``min(1, e^ε α + δ, 1 - e^-ε (1 - δ - α))``; the bound is that curve's area.
    ``epsilon`` None (no DP) gives 1.
    """
    if epsilon is None or not math.isfinite(epsilon):
        return 1.0
    alpha = np.linspace(0.0, 1.0, grid)
    delta = float(delta or 0.0)
    tpr = np.minimum.reduce(
        [np.ones_like(alpha), math.exp(epsilon) * alpha + delta, 1.0 - math.exp(-epsilon) * (1.0 - delta - alpha)]
    )
    tpr = np.clip(tpr, 0.0, 1.0)
    return float(((tpr[1:] + tpr[:-1]) / 2 * np.diff(alpha)).sum())


def bank_spacing(bank: np.ndarray) -> float:
    """Median distance from a bank row to its nearest other row (1 for a single row)."""
    if len(bank) < 2:
        return 1.0
    distances = nearest_distances(build_index(bank), bank, k=2)[:, 1]
    spacing = float(np.median(distances))
    return spacing if spacing > 0 else 1.0


def image_statistics(
    samples: Sequence[Sample],
    info: CategoryInfo,
    embedder: Any,
    index: Any,
    *,
    batch_size: int,
    num_workers: int,
    positions: Callable[[Sample, tuple[int, int]], np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Per readable image: min, mean and max over its patches of the distance to the nearest bank row.

    ``positions(sample, grid)``: the flat patch positions the release would take from that image
    (public: the attacker knows them); None: every patch.
    """
    out: dict[str, dict[str, float]] = {}
    skipped: list[dict[str, str]] = []
    for batch in iter_image_batches(samples, info.image_size, batch_size, skipped, num_workers):
        features = embedder.embed(batch.images)
        n, h, w, d = features.shape
        distances = nearest_distances(index, features.reshape(-1, d)).reshape(n, h * w)
        for sample, row in zip(batch.samples, distances, strict=True):
            if positions is not None:
                row = row[positions(sample, (h, w))]
            out[sample.key] = {"min": float(row.min()), "mean": float(row.mean()), "max": float(row.max())}
    return out


def _sample(samples: Sequence[Sample], limit: int | None, seed: int, *labels: str) -> list[Sample]:
    samples = sorted(samples, key=lambda s: s.key)
    if limit is None or len(samples) <= limit:
        return samples
    order = derive_rng(seed, "privacy_audit", *labels).permutation(len(samples))[:limit]
    return [samples[i] for i in sorted(order)]


def membership_audit(
    members: Mapping[str, Sequence[Sample]],
    non_members: Mapping[str, Sequence[Sample]],
    infos: Mapping[str, CategoryInfo],
    embedder: Any,
    banks: Mapping[str, np.ndarray],
    *,
    statistic: str = "min",
    batch_size: int = 8,
    num_workers: int = 0,
    max_images_per_category: int | None = None,
    seed: int = 0,
    epsilon: float | None = None,
    delta: float | None = None,
    positions: Callable[[Sample, tuple[int, int]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Attack the bank of every category that has members and non-members; JSON-ready report.

    ``members`` / ``non_members``: category -> images. ``embedder`` must already apply the
    public map of the release (:func:`~fedpatchcore.core.privacy.release.with_public_transform`).
    ``epsilon``/``delta``: the release's budget, for the bound (None: no DP). ``positions``:
    the public patch positions of each image's release (rows mechanism): only those patches
    count, as only they could have reached the bank.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"privacy.audit.statistic must be one of {list(STATISTICS)}, got {statistic!r}")
    scores: dict[str, dict[str, list[float]]] = {s: {"members": [], "non_members": []} for s in STATISTICS}
    per_category = {}
    for category in sorted(banks):
        inside = _sample(members.get(category, ()), max_images_per_category, seed, category, "members")
        outside = _sample(non_members.get(category, ()), max_images_per_category, seed, category, "non_members")
        if not inside or not outside:
            continue
        bank = np.asarray(banks[category], dtype=np.float32)
        index, spacing = build_index(bank), bank_spacing(bank)
        measured = {
            group: image_statistics(
                chosen,
                infos[category],
                embedder,
                index,
                batch_size=batch_size,
                num_workers=num_workers,
                positions=positions,
            )
            for group, chosen in (("members", inside), ("non_members", outside))
        }
        for name in STATISTICS:
            for group, values in measured.items():
                # Closer to the bank = more likely a member: the score is the negated, scaled distance.
                scores[name][group].extend(-v[name] / spacing for v in values.values())
        category_scores = {g: [-v[statistic] / spacing for v in values.values()] for g, values in measured.items()}
        per_category[category] = {
            **attack_metrics(category_scores["members"], category_scores["non_members"]),
            "n_members": len(measured["members"]),
            "n_non_members": len(measured["non_members"]),
            "bank_rows": int(len(bank)),
        }
    results = {name: attack_metrics(s["members"], s["non_members"]) for name, s in scores.items()}
    headline = results[statistic]
    report = {
        "enabled": True,
        "statistic": statistic,
        "attack_auc": headline["auc"],
        "attack_auc_std_error": headline["auc_std_error"],
        "tpr_at_fpr_0.01": headline["tpr_at_fpr_0.01"],
        "n_members": len(scores[statistic]["members"]),
        "n_non_members": len(scores[statistic]["non_members"]),
        "dp_auc_bound": dp_auc_bound(epsilon, delta),
        "by_statistic": results,
        "categories": per_category,
    }
    logger.info(
        "Membership inference on the bank: AUC %s (± %s), TPR at 1%% FPR %s, bound from ε: %.3f",
        _fmt(report["attack_auc"]),
        _fmt(report["attack_auc_std_error"]),
        _fmt(report["tpr_at_fpr_0.01"]),
        report["dp_auc_bound"],
    )
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
