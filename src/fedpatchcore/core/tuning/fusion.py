"""Choosing each category's fusion rule on its validation split: good validation images and
their pseudo-anomalies (structural ones and removed / moved parts), never a test image.

:func:`choose_fusion` gets every expert's raw scores of those images (label 0: a good validation
image, 1: one of its pseudo-anomalous copies) and

1. keeps the composition expert's number of clusters with the best validation AUROC;
2. z-normalises every expert with its scores of the GOOD validation images only;
3. scores every candidate rule (:data:`~fedpatchcore.core.experts.fusion.RULES`: PatchCore alone,
   one logical expert alone, their sum, max, AUROC-weighted sum) by its validation AUROC: the
   mean of its AUROC on the structural pseudo-anomalies and its AUROC on the removed and moved
   parts (each against all good validation images), so both kinds of defect count alike
   whatever the number of generators of each;
4. keeps the simplest rule that is not clearly beaten: PatchCore alone (``texture``) stays unless
   a single logical expert beats it by more than ``min_gain``, and the single expert so chosen
   stays unless a combination beats it by more than ``min_gain`` (ties go to the earlier
   candidate). A category whose defects PatchCore already finds keeps PatchCore's scores, and a
   combination, which adds the noise of every expert it sums, must earn its place: on a
   validation split of a few good images the AUROCs of close rules differ by chance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pandas as pd

from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.evaluation.metrics import image_auroc
from fedpatchcore.core.experts.fusion import ALL_EXPERTS, RULES, FusionRule, Normaliser
from fedpatchcore.core.experts.model import CategoryExperts
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.scoring.experts import CategoryExpertScores, fuse_category
from fedpatchcore.core.scoring.patch_scores import score_images
from fedpatchcore.core.tuning.pseudo_anomalies import PART_PSEUDO_ANOMALY_KINDS
from fedpatchcore.core.tuning.split import build_validation_images
from fedpatchcore.core.tuning.tuner import embed_images

__all__ = ["REPORTED", "FusionChoice", "choose_category_fusion", "choose_fusion", "expert_maps_and_scores"]

#: Rows of the published per-expert metrics: every expert alone, the best combination, the choice.
REPORTED = (*ALL_EXPERTS, "fused", "selected")


@dataclass
class FusionChoice:
    """What was chosen for one category, and what it was chosen among."""

    rule: FusionRule  # the chosen rule ("selected") with its normalisation statistics
    fused: FusionRule | None  # the best combination on validation (chosen or not), for the report
    normalisers: dict[str, Normaliser]  # every expert's statistics of good validation images
    val_auroc: dict[str, float | None]  # every expert's own validation AUROC
    table: list[dict]  # one row per candidate: rule, val_auroc, chosen (and composition k's)

    def rule_for(self, name: str) -> FusionRule:
        """The rule ``name`` (an expert alone, or ``fused`` / ``selected``) with this category's statistics."""
        if name == "selected":
            return self.rule
        if name == "fused":
            if self.fused is None:
                raise ValueError("no combination rule was among the candidates")
            return self.fused
        return FusionRule.build(name, self.normalisers, self.val_auroc, self.rule.composition_k)

    def to_dict(self) -> dict:
        return {
            "selected": self.rule.to_dict(),
            "fused": None if self.fused is None else self.fused.to_dict(),
            "normalisers": {name: {"mean": n.mean, "std": n.std} for name, n in self.normalisers.items()},
            "val_auroc": dict(self.val_auroc),
            "table": list(self.table),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> FusionChoice:
        return cls(
            FusionRule.from_dict(data["selected"]),
            None if data.get("fused") is None else FusionRule.from_dict(data["fused"]),
            {str(k): Normaliser(float(v["mean"]), float(v["std"])) for k, v in data["normalisers"].items()},
            {str(k): (None if v is None else float(v)) for k, v in data["val_auroc"].items()},
            list(data.get("table") or []),
        )


def _auroc(scores: np.ndarray, labels: np.ndarray, families: list[np.ndarray]) -> float | None:
    """Mean over ``families`` (masks of anomalous images) of the AUROC of each against all good images."""
    good = labels == 0
    values = []
    for family in families:
        value = image_auroc(scores[good | family], labels[good | family])
        if value is not None:
            values.append(float(value))
    return float(np.mean(values)) if values else None


def _families(labels: np.ndarray, kinds) -> list[np.ndarray]:
    """Anomalous images split into structural and part pseudo-anomalies (one family without ``kinds``)."""
    anomalous = labels == 1
    if kinds is None:
        return [anomalous]
    part = np.isin(np.asarray(kinds, dtype=object), PART_PSEUDO_ANOMALY_KINDS)
    return [f for f in (anomalous & ~part, anomalous & part) if f.any()]


def choose_fusion(
    scores: Mapping[str, np.ndarray],
    composition: Mapping[int, np.ndarray],
    labels: np.ndarray,
    kinds: Sequence[str] | None = None,
    candidates: Sequence[str] = RULES,
    min_gain: float = 0.0,
) -> FusionChoice:
    """The rule of one category (see the module docstring).

    ``scores``: ``texture``, ``global``, ``position`` -> raw scores ``(n,)`` of the validation
    images; ``composition``: clusters k -> the composition expert's raw scores ``(n,)``;
    ``labels``: 0 good validation image, 1 pseudo-anomaly (both must occur); ``kinds``: each
    image's pseudo-anomaly kind (anything for a good one; None: one family).
    """
    labels = np.asarray(labels).astype(int)
    families = _families(labels, kinds)
    if not (labels == 0).any() or not (labels == 1).any():
        raise ValueError("choosing a fusion rule needs good validation images and pseudo-anomalies")
    unknown = [c for c in candidates if c not in RULES]
    if unknown or not candidates:
        raise ValueError(f"experts.fusion.candidates: unknown rules {unknown} (choose from {list(RULES)})")
    table: list[dict] = []
    k_aurocs = {k: _auroc(np.asarray(values), labels, families) for k, values in sorted(composition.items())}
    best_k = max(k_aurocs, key=lambda k: (k_aurocs[k] if k_aurocs[k] is not None else -1.0, -k))
    for k, value in k_aurocs.items():
        table.append({"rule": f"composition(k={k})", "val_auroc": value, "chosen": False})
    raw = {**{name: np.asarray(scores[name], dtype=np.float64) for name in ALL_EXPERTS if name != "composition"}}
    raw["composition"] = np.asarray(composition[best_k], dtype=np.float64)
    normalisers = {name: Normaliser.fit(values[labels == 0]) for name, values in raw.items()}
    aurocs = {name: _auroc(values, labels, families) for name, values in raw.items()}
    results = {}
    for name in candidates:
        rule = FusionRule.build(name, normalisers, aurocs, best_k)
        results[name] = (rule, _auroc(rule.image_scores(raw), labels, families))
    def better(pool: list[str], incumbent: str | None) -> str | None:
        """The best of ``pool`` if it beats ``incumbent`` by more than ``min_gain`` (else the incumbent)."""
        ranked = [name for name in pool if results[name][1] is not None]
        if not ranked:
            return incumbent
        best = max(ranked, key=lambda name: (results[name][1], -list(candidates).index(name)))
        if incumbent is None or results[best][1] - results[incumbent][1] > min_gain:
            return best
        return incumbent

    singles = [name for name in candidates if name in ALL_EXPERTS]
    best = "texture" if "texture" in singles and results["texture"][1] is not None else None
    best = better([name for name in singles if name != best], best)
    best = better([name for name in candidates if name not in ALL_EXPERTS], best)
    if best is None:
        raise ValueError("no fusion rule could be validated")
    chosen = results[best][0]
    chosen.details = {
        "val_auroc": {name: value for name, (_, value) in results.items()},
        "composition_val_auroc": {str(k): v for k, v in k_aurocs.items()},
        "n_val_good": int((labels == 0).sum()),
        "n_val_anomalous": int((labels == 1).sum()),
    }
    table += [{"rule": name, "val_auroc": value, "chosen": name == best} for name, (_, value) in results.items()]
    combinations = [name for name in candidates if name not in ALL_EXPERTS and results[name][1] is not None]
    fused = None
    if combinations:
        fused = results[max(combinations, key=lambda name: (results[name][1], -list(candidates).index(name)))][0]
    return FusionChoice(chosen, fused, normalisers, aurocs, table)


def choose_category_fusion(
    validation_samples: Sequence[Sample],
    info: CategoryInfo,
    embedder: PatchEmbedder,
    index: faiss.Index,
    experts: CategoryExperts,
    *,
    texture: Mapping[str, Any],
    kinds: Sequence[str],
    per_image: int,
    seed: int,
    candidates: Sequence[str] = RULES,
    min_gain: float = 0.0,
    batch_size: int = 8,
) -> FusionChoice:
    """Load one category's good validation images (TRAINING images held out of every bank), make
    their seeded pseudo-anomalies, score all of them with PatchCore (``texture``: the
    :func:`~fedpatchcore.core.scoring.patch_scores.score_images` keywords of the category) and the
    logical experts, and :func:`choose_fusion`. No test image is read here."""
    validation = build_validation_images(validation_samples, info.image_size, seed, kinds, per_image)
    features = embed_images(embedder, validation.images, batch_size)
    _, texture_scores = score_images(index, features, info.image_size, **texture)
    outputs = experts.score(features)
    image_kinds = ["good"] * len(validation.good) + list(validation.kinds)
    return choose_fusion(
        {"texture": texture_scores, **outputs.scores},
        outputs.composition,
        validation.labels,
        image_kinds,
        candidates,
        min_gain,
    )


def _category_scores(expert_scores: dict[str, np.ndarray], category: str, keys: list[str]) -> CategoryExpertScores:
    scores = CategoryExpertScores.from_arrays(expert_scores, category)
    if scores.keys != list(keys):
        order = {key: i for i, key in enumerate(scores.keys)}
        missing = [key for key in keys if key not in order]
        if missing:
            raise ValueError(f"{category}: the experts scored no {len(missing)} image(s) PatchCore scored, e.g. {missing[:3]}")
        rows = np.asarray([order[key] for key in keys])
        scores = CategoryExpertScores(
            list(keys),
            {n: v[rows] for n, v in scores.scores.items()},
            {k: v[rows] for k, v in scores.composition.items()},
            {n: v[rows] for n, v in scores.cells.items()},
        )
    return scores


def expert_maps_and_scores(
    name: str,
    texture_anomaly_maps: dict[str, dict[str, Any]],
    texture_image_scores: pd.DataFrame,
    expert_scores: dict[str, np.ndarray],
    fusion_rules: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Maps and image scores of one rule (an expert alone, ``fused`` or ``selected``) for every
    category, in the form :func:`score_test_images` returns them."""
    by_key = texture_image_scores.set_index("key")
    maps, frames = {}, []
    for category, entry in texture_anomaly_maps.items():
        keys = list(entry["keys"])
        rule = FusionChoice.from_dict(fusion_rules[category]).rule_for(name)
        rows = by_key.loc[keys]
        fused_maps, fused_scores = fuse_category(
            rule, np.asarray(entry["maps"]), rows["image_score"].to_numpy(), _category_scores(expert_scores, category, keys)
        )
        maps[category] = {**entry, "maps": fused_maps}
        frames.append(rows.reset_index().assign(image_score=fused_scores.astype(float)))
    return maps, pd.concat(frames, ignore_index=True)[list(texture_image_scores.columns)]
