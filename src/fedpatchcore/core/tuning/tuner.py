"""Choose PatchCore settings per category on a validation split of the TRAINING images only.

No test image and no test label is ever read here:

1. :func:`split_validation` keeps only ``split == "train"`` samples (test samples are dropped
   before any other attribute of them is looked at) and sets aside a seeded share of each
   category's training images as its validation split;
2. :func:`build_validation_images` loads the validation images (at each candidate size, as
   training and test images are read) and makes seeded pseudo-anomalies of them
   (:mod:`fedpatchcore.core.tuning.pseudo_anomalies`): good validation images are label 0, their
   pseudo-anomalous copies label 1;
3. for every candidate :class:`Setting` (backbone x layers x resolution x image score x
   neighbourhood) a memory bank is built from the remaining training images (streamed
   extraction -> greedy k-center coreset -> faiss index, as in training), the validation
   images are scored, and the image AUROC on them is the setting's ``val_auroc``. Settings
   that only differ in their image score share one bank and one embedding;
4. :func:`choose_settings` keeps, per category, the best ``val_auroc``; the default setting
   stays unless another beats it by more than ``min_gain`` (ties: the earlier candidate).

:class:`TuneResult` holds the table ``category, setting, val_auroc, chosen`` (+ details),
the chosen :class:`Setting` per category, the parameters form of that choice
(:meth:`TuneResult.parameters`, for a ``parameters_tuned.yml``) and a readable report
(:meth:`TuneResult.report`). This module does not import kedro.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.coreset.kcenter import coreset_size
from fedpatchcore.core.coreset.streaming import select_coreset_streaming
from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.evaluation.metrics import image_auroc
from fedpatchcore.core.features import backbones as backbones_module
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.features.extraction import extract_patch_features
from fedpatchcore.core.features.setting import EmbedderCache, Setting
from fedpatchcore.core.scoring.patch_scores import score_images
from fedpatchcore.core.tuning.pseudo_anomalies import PSEUDO_ANOMALY_KINDS
from fedpatchcore.core.tuning.split import (
    ValidationImages,
    ValidationSplit,
    build_validation_images,
    split_validation,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BankConfig",
    "TuneResult",
    "build_category_bank",
    "candidate_grid",
    "choose_settings",
    "embed_images",
    "evaluate_candidates",
    "tune",
    "tune_report",
]

TABLE_COLUMNS = [
    "category",
    "setting",
    "val_auroc",
    "chosen",
    "is_default",
    "backbone",
    "layers",
    "image_size",
    "image_score",
    "topk",
    "reweight",
    "neighbourhood",
    "n_val_good",
    "n_val_anomalous",
    "bank_rows",
    "seconds",
]


# --------------------------------------------------------------------------------------------
# candidates

def candidate_grid(
    backbones: Sequence[str] = (backbones_module.DEFAULT_BACKBONE,),
    layers: Mapping[str, Sequence] | None = None,
    image_sizes: Sequence = (None,),
    scorings: Sequence[Mapping[str, Any]] = ({"image_score": "max"},),
    neighbourhoods: Sequence[int] = (3,),
    weights_paths: Mapping[str, str] | None = None,
    default: Setting | None = None,
) -> list[Setting]:
    """Every combination backbone x layers x image size x neighbourhood x scoring, default first.

    ``layers``: per backbone, a list of layer pairs (``None`` = its default pair); backbones
    not listed use only their default. ``scorings``: dicts of :class:`Setting` fields, e.g.
    ``{"image_score": "topk_mean", "topk": 10}`` or ``{"image_score": "max", "reweight": True}``.
    ``weights_paths``: weight files per backbone (timm models need one). ``default`` (when
    given) is put first and not repeated: :func:`choose_settings` prefers it on ties.
    """
    layers = layers or {}
    weights_paths = weights_paths or {}
    grid: list[Setting] = [] if default is None else [default]
    for name, size, neighbourhood, scoring in itertools.product(
        backbones, image_sizes, neighbourhoods, scorings
    ):
        for pair in layers.get(name, [None]):
            setting = Setting(
                backbone=name,
                layers=pair,
                image_size=size,
                neighbourhood=int(neighbourhood),
                weights_path=weights_paths.get(name),
                **dict(scoring),
            )
            if setting not in grid:
                grid.append(setting)
    return grid


# --------------------------------------------------------------------------------------------
# banks and scoring


@dataclass(frozen=True)
class BankConfig:
    """How a memory bank is built and scored (the ``coreset`` / ``extraction`` / ``scoring`` values)."""

    coreset_ratio: float = 0.1
    coreset_max_size: int | None = 20000
    projection_dim: int | None = 128
    num_starts: int = 1
    batch_size: int = 8
    num_workers: int = 0
    sigma: float = 4.0
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def from_params(
        cls,
        coreset: Mapping[str, Any],
        extraction: Mapping[str, Any],
        scoring: Mapping[str, Any],
        seed: int = 0,
        device: str = "cpu",
    ) -> BankConfig:
        return cls(
            coreset_ratio=float(coreset.get("ratio", 0.1)),
            coreset_max_size=coreset.get("max_size", 20000),
            projection_dim=coreset.get("projection_dim", 128),
            num_starts=int(coreset.get("num_starts", 1)),
            batch_size=int(extraction.get("batch_size", 8)),
            num_workers=int(extraction.get("num_workers", 0)),
            sigma=float(scoring.get("sigma", 4.0)),
            device=device,
            seed=int(seed),
        )




def build_category_bank(
    samples: Sequence[Sample],
    info: CategoryInfo,
    embedder: PatchEmbedder,
    config: BankConfig,
    scratch_dir: str | Path | None = None,
) -> np.ndarray:
    """Memory bank of one category from ``samples`` (read at ``info.image_size``), as in training:
    streamed extraction -> greedy k-center on the projection -> gathered float32 rows."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bank_{info.name}_", dir=scratch_dir))
    try:
        features = extract_patch_features(
            samples,
            {info.name: info},
            embedder,
            workdir,
            batch_size=config.batch_size,
            projection_dim=config.projection_dim,
            seed=config.seed,
            num_workers=config.num_workers,
            description="tune",
        )
        feature_file = features.files[info.name]
        k = coreset_size(feature_file.n_rows, config.coreset_ratio, config.coreset_max_size)
        chosen = select_coreset_streaming(feature_file, k, seed=config.seed, num_starts=config.num_starts)
        return np.asarray(feature_file.gather(chosen), dtype=np.float32)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def embed_images(embedder: PatchEmbedder, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Patch features ``(n, h, w, d)`` of uint8 images ``(n, H, W, 3)``, in batches."""
    parts = [embedder.embed(images[i : i + batch_size]) for i in range(0, len(images), max(1, batch_size))]
    return np.concatenate(parts)


def evaluate_candidates(
    train_samples: Sequence[Sample],
    validation_samples: Sequence[Sample],
    info: CategoryInfo,
    candidates: Sequence[Setting],
    config: BankConfig,
    *,
    kinds: Sequence[str] = PSEUDO_ANOMALY_KINDS,
    per_image: int = 1,
    embedders: EmbedderCache | None = None,
    scratch_dir: str | Path | None = None,
) -> pd.DataFrame:
    """``val_auroc`` of every candidate on one category (one row each, candidate order).

    The validation images are read at each candidate's own size, exactly as training and test
    images are, and their pseudo-anomalies drawn there from the same seed (regions scale with
    the image), so every resolution is judged on comparable anomalies without resampling.
    """
    embedders = embedders or EmbedderCache(config.device)
    validation_by_size: dict[tuple[int, int], ValidationImages] = {}
    rows: dict[Setting, dict] = {}
    groups: dict[tuple, list[Setting]] = {}
    for setting in candidates:
        groups.setdefault(setting.embedding_key, []).append(setting)
    for group in groups.values():
        started = time.perf_counter()
        first = group[0]
        size = tuple(first.resolved_size(info))
        if size not in validation_by_size:
            validation_by_size[size] = build_validation_images(
                validation_samples, size, config.seed, kinds, per_image
            )
        validation = validation_by_size[size]
        labels = validation.labels
        embedder = embedders.get(first)
        bank = build_category_bank(
            train_samples, replace(info, image_size=size), embedder, config, scratch_dir
        )
        index = build_index(bank)
        features = embed_images(embedder, validation.images, config.batch_size)
        shared = time.perf_counter() - started
        for setting in group:
            t0 = time.perf_counter()
            _, scores = score_images(
                index,
                features,
                size,
                sigma=config.sigma,
                reweight=setting.reweight,
                bank=bank,
                num_neighbours=setting.num_neighbours,
                image_score=setting.image_score,
                topk=setting.topk,
            )
            auroc = image_auroc(scores, labels)
            rows[setting] = {
                "category": info.name,
                "setting": setting.name,
                "val_auroc": float("nan") if auroc is None else float(auroc),
                "chosen": False,
                "is_default": False,
                "backbone": setting.backbone,
                "layers": "+".join(embedder.backbone.layers),
                "image_size": f"{size[0]}x{size[1]}",
                "image_score": setting.image_score,
                "topk": setting.topk if setting.image_score == "topk_mean" else None,
                "reweight": setting.reweight,
                "neighbourhood": setting.neighbourhood,
                "n_val_good": int((labels == 0).sum()),
                "n_val_anomalous": int((labels == 1).sum()),
                "bank_rows": int(len(bank)),
                "seconds": round(shared / len(group) + time.perf_counter() - t0, 3),
            }
            logger.info("tune %s: %s val AUROC %.4f", info.name, setting.name, rows[setting]["val_auroc"])
    return pd.DataFrame([rows[s] for s in candidates], columns=TABLE_COLUMNS)


def choose_settings(
    table: pd.DataFrame, default_setting: str | None = None, min_gain: float = 0.0
) -> dict[str, str]:
    """Per category the setting with the best ``val_auroc`` (first in table order on ties).

    When ``default_setting`` is a row of the category, it is kept unless the best beats it by
    more than ``min_gain`` (so noise on a small validation set does not move away from it).
    """
    chosen = {}
    for category, rows in table.groupby("category", sort=True):
        valid = rows[rows["val_auroc"].notna()]
        if valid.empty:
            if default_setting is None or default_setting not in set(rows["setting"]):
                raise ValueError(f"no candidate could be validated for category {category!r}")
            chosen[category] = default_setting
            continue
        best = valid.loc[valid["val_auroc"].idxmax()]  # idxmax: first maximum in table order
        choice = str(best["setting"])
        defaults = valid[valid["setting"] == default_setting]
        if (
            default_setting is not None
            and not defaults.empty
            and float(best["val_auroc"]) - float(defaults["val_auroc"].iloc[0]) <= float(min_gain)
        ):
            choice = default_setting
        chosen[category] = choice
    return chosen


# --------------------------------------------------------------------------------------------
# the whole tuning run


@dataclass
class TuneResult:
    table: pd.DataFrame  # category, setting, val_auroc, chosen, ... (one row per category x candidate)
    chosen: dict[str, Setting]
    split: ValidationSplit
    default: Setting
    min_gain: float = 0.0

    def parameters(self) -> dict[str, Any]:
        """The chosen settings as parameters: ``{"tuned": {category: {...}}}`` (YAML-ready)."""
        tuned = {}
        for category, setting in sorted(self.chosen.items()):
            row = self.table[(self.table["category"] == category) & (self.table["chosen"])].iloc[0]
            tuned[category] = {
                "setting": setting.name,
                "val_auroc": round(float(row["val_auroc"]), 6),
                **setting.to_params(),
            }
        return {"tuned": tuned}

    def report(self) -> str:
        return tune_report(self.table, self.default.name, self.min_gain)


def tune(
    samples: Iterable[Sample],
    infos: Mapping[str, CategoryInfo],
    candidates: Sequence[Setting],
    config: BankConfig | None = None,
    *,
    default: Setting | None = None,
    validation_fraction: float = 0.2,
    min_validation: int = 2,
    kinds: Sequence[str] = PSEUDO_ANOMALY_KINDS,
    per_image: int = 1,
    min_gain: float = 0.0,
    categories: Iterable[str] | None = None,
    scratch_dir: str | Path | None = None,
    split: ValidationSplit | None = None,
) -> TuneResult:
    """Score every candidate on every category's validation split and choose one per category.

    ``samples`` may hold test samples: they are dropped by :func:`split_validation` before
    anything is loaded (pass ``split`` to reuse an existing split instead). ``default``: the
    current setting (:meth:`Setting.from_params` of the run's parameters); put first and kept
    unless beaten by more than ``min_gain``. Everything random derives from ``config.seed``.
    """
    config = config or BankConfig()
    default = default or Setting()
    candidates = [default] + [c for c in candidates if c != default]
    split = split or split_validation(
        samples, validation_fraction, config.seed, min_validation=min_validation
    )
    embedders = EmbedderCache(config.device)
    wanted = None if categories is None else set(categories)
    tables = []
    for category, (train, validation) in split.by_category().items():
        if wanted is not None and category not in wanted:
            continue
        info = infos[category]
        logger.info(
            "tune %s: %d bank images, %d validation images (x%d pseudo-anomalies), %d candidates",
            category,
            len(train),
            len(validation),
            per_image,
            len(candidates),
        )
        tables.append(
            evaluate_candidates(
                train,
                validation,
                info,
                candidates,
                config,
                kinds=kinds,
                per_image=per_image,
                embedders=embedders,
                scratch_dir=scratch_dir,
            )
        )
    if not tables:
        raise ValueError("no category to tune")
    table = pd.concat(tables, ignore_index=True)
    table["is_default"] = table["setting"] == default.name
    choice = choose_settings(table, default.name, min_gain)
    table["chosen"] = [choice[c] == s for c, s in zip(table["category"], table["setting"], strict=True)]
    by_name = {c.name: c for c in candidates}
    return TuneResult(table, {c: by_name[s] for c, s in choice.items()}, split, default, float(min_gain))


def tune_report(table: pd.DataFrame, default_setting: str | None = None, min_gain: float = 0.0) -> str:
    """Markdown: per category what was chosen, its validation AUROC, the default's and why."""
    lines = ["# Settings chosen per category (validation split + pseudo-anomalies; no test image read)", ""]
    for category, rows in table.groupby("category", sort=True):
        rows = rows.sort_values("val_auroc", ascending=False, kind="stable")
        chosen = rows[rows["chosen"]].iloc[0]
        n_good, n_anom = int(chosen["n_val_good"]), int(chosen["n_val_anomalous"])
        lines.append(f"## {category}")
        lines.append(
            f"- chosen: `{chosen['setting']}` (val AUROC {chosen['val_auroc']:.4f} on {n_good} good "
            f"validation images vs {n_anom} pseudo-anomalies; {len(rows)} candidates)"
        )
        default_rows = rows[rows["setting"] == default_setting]
        if not default_rows.empty:
            d = float(default_rows["val_auroc"].iloc[0])
            gain = float(chosen["val_auroc"]) - d
            if chosen["setting"] == default_setting:
                best = rows.iloc[0]
                if best["setting"] == default_setting:
                    why = "the default is the best candidate on validation"
                else:
                    why = (
                        f"default kept: the best other candidate `{best['setting']}` "
                        f"({float(best['val_auroc']):.4f}) gains only {float(best['val_auroc']) - d:+.4f} "
                        f"(min_gain {min_gain})"
                    )
            else:
                why = f"beats the default `{default_setting}` ({d:.4f}) by {gain:+.4f} > min_gain {min_gain}"
            lines.append(f"- why: {why}")
        others = rows[~rows["chosen"]].head(2)
        if len(others):
            runner = ", ".join(f"`{r.setting}` {r.val_auroc:.4f}" for r in others.itertuples())
            lines.append(f"- next best: {runner}")
        lines.append("")
    return "\n".join(lines)
