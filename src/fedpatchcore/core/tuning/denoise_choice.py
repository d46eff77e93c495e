"""Choose the patch-denoising method per category without test labels.

Whether denoising pays depends on the category: a texture with little normal variation gives
up nothing when its most outlying patches go, an assembly whose rare parts are normal loses
them. The choice is made like ``tune`` chooses a backbone, on training images only:

1. the category's validation split (:func:`~fedpatchcore.core.tuning.split.split_validation`)
   is held out; its good images and their seeded pseudo-anomalies are the labelled validation
   set (:func:`~fedpatchcore.core.tuning.split.build_validation_images`);
2. a known share (``planted_share``) of the remaining training images gets a seeded
   pseudo-anomaly *planted into the training folder* (another seed than the validation ones,
   the same kinds): a contaminated "good" folder whose contamination, unlike a real one's, is
   known patch by patch;
3. the planted folder is extracted once (streamed, as training does); every candidate method
   (``none``, ``knn``, ``lof``, ``gaussian``) then builds its bank from the same features
   (denoise -> k-center) and the validation set is scored against it. ``val_auroc`` says what
   the method gives a detector trained on a contaminated folder (the planted anomalies hide
   the validation ones when kept; a method that drops rare normal patches raises the good
   images' scores), ``drop_precision`` which share of the patches it dropped were planted;
4. per category the best ``val_auroc`` is chosen; the run's own method stays unless another
   beats it by more than ``min_gain``.

The result maps onto ``coreset.denoise_by_category``. Nothing here imports kedro.
"""

from __future__ import annotations

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
from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.coreset.denoise import DenoiseSettings, denoise_feature_file
from fedpatchcore.core.coreset.kcenter import coreset_size
from fedpatchcore.core.coreset.streaming import select_coreset_streaming
from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.evaluation.metrics import image_auroc
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.features.extraction import extract_patch_features
from fedpatchcore.core.scoring.patch_scores import score_images
from fedpatchcore.core.tuning.pseudo_anomalies import PSEUDO_ANOMALY_KINDS, make_pseudo_anomaly
from fedpatchcore.core.tuning.split import ValidationSplit, build_validation_images
from fedpatchcore.core.tuning.tuner import BankConfig, embed_images

logger = logging.getLogger(__name__)

__all__ = ["DENOISE_TABLE_COLUMNS", "DenoiseChoice", "choose_denoising", "evaluate_denoising", "planted_images"]

DENOISE_TABLE_COLUMNS = [
    "category",
    "denoise",
    "val_auroc",
    "drop_precision",
    "chosen",
    "is_default",
    "planted_images",
    "bank_images",
    "planted_patch_share",
    "bank_rows",
    "seconds",
]


def planted_images(keys: Sequence[str], share: float, seed: int, category: str) -> list[str]:
    """The ``round(share × n)`` bank images (at least one when ``share > 0``) that get a planted anomaly."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"tune.planted_share must lie in [0, 1), got {share}")
    count = 0 if share == 0 else max(1, int(round(share * len(keys))))
    order = derive_rng(seed, "planted", category).permutation(len(keys))
    return sorted(sorted(keys)[i] for i in order[:count])


@dataclass
class DenoiseChoice:
    table: pd.DataFrame  # DENOISE_TABLE_COLUMNS, one row per category x method
    chosen: dict[str, str]  # category -> method

    def parameters(self) -> dict[str, Any]:
        """``{"coreset": {"denoise_by_category": {category: method}}}`` (YAML-ready)."""
        return {"coreset": {"denoise_by_category": dict(sorted(self.chosen.items()))}}


def evaluate_denoising(
    train: Sequence[Sample],
    validation: Sequence[Sample],
    info: CategoryInfo,
    embedder: PatchEmbedder,
    config: BankConfig,
    methods: Sequence[str],
    denoise: DenoiseSettings,
    planted_share: float,
    *,
    kinds: Sequence[str] = PSEUDO_ANOMALY_KINDS,
    per_image: int = 1,
    scratch_dir: str | Path | None = None,
) -> pd.DataFrame:
    """One row per method of one category (see the module docstring)."""
    category = info.name
    planted = set(planted_images([s.key for s in train], planted_share, config.seed, category))
    masks: dict[str, np.ndarray] = {}

    def plant(sample: Sample, image: np.ndarray) -> np.ndarray:
        if sample.key not in planted:
            return image
        rng = derive_rng(config.seed, "planted", category, sample.key)
        anomaly = make_pseudo_anomaly(image, kinds[len(masks) % len(kinds)], rng, image)
        masks[sample.key] = anomaly.mask
        return anomaly.image

    validation_images = build_validation_images(validation, info.image_size, config.seed, kinds, per_image)
    features = embed_images(embedder, validation_images.images, config.batch_size)
    workdir = Path(tempfile.mkdtemp(prefix=f"denoise_{category}_", dir=scratch_dir))
    rows = []
    try:
        started = time.perf_counter()
        extracted = extract_patch_features(
            train,
            {category: info},
            embedder,
            workdir,
            batch_size=config.batch_size,
            projection_dim=config.projection_dim,
            seed=config.seed,
            num_workers=config.num_workers,
            description="tune denoising",
            transform=plant,
        )
        feature_file, grid = extracted.files[category], extracted.grid[category]
        keys = extracted.image_keys[category]
        truth = _planted_patches(keys, masks, grid)
        shared = time.perf_counter() - started
        k = coreset_size(feature_file.n_rows, config.coreset_ratio, config.coreset_max_size)
        for method in methods:
            t0 = time.perf_counter()
            settings = replace(denoise, method=method)
            kept, precision = None, float("nan")
            if settings.enabled:
                result = denoise_feature_file(feature_file, len(keys), grid, settings)
                kept = result.kept
                dropped = result.dropped
                precision = float(truth[dropped].mean()) if len(dropped) else float("nan")
            chosen = select_coreset_streaming(
                feature_file, min(k, feature_file.n_rows if kept is None else len(kept)), seed=config.seed,
                num_starts=config.num_starts, candidates=kept,
            )
            bank = np.asarray(feature_file.gather(chosen), dtype=np.float32)
            _, scores = score_images(build_index(bank), features, info.image_size, sigma=config.sigma)
            auroc = image_auroc(scores, validation_images.labels)
            rows.append(
                {
                    "category": category,
                    "denoise": method,
                    "val_auroc": float("nan") if auroc is None else float(auroc),
                    "drop_precision": precision,
                    "chosen": False,
                    "is_default": False,
                    "planted_images": len(planted),
                    "bank_images": len(keys),
                    "planted_patch_share": float(truth.mean()),
                    "bank_rows": int(len(bank)),
                    "seconds": round(shared / len(methods) + time.perf_counter() - t0, 3),
                }
            )
            logger.info(
                "tune denoising %s: %s val AUROC %.4f, drop precision %.2f",
                category, method, rows[-1]["val_auroc"], precision,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return pd.DataFrame(rows, columns=DENOISE_TABLE_COLUMNS)


def _planted_patches(keys: Sequence[str], masks: Mapping[str, np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """(N,) bool over the feature file's rows: the patch's cell of its image overlaps a planted mask."""
    height, width = grid
    out = np.zeros((len(keys), height, width), dtype=bool)
    for i, key in enumerate(keys):
        if key in masks:
            mask = masks[key]
            ys = np.minimum(np.arange(mask.shape[0]) * height // mask.shape[0], height - 1)
            xs = np.minimum(np.arange(mask.shape[1]) * width // mask.shape[1], width - 1)
            rows, cols = np.nonzero(mask)
            out[i, ys[rows], xs[cols]] = True
    return out.reshape(-1)


def choose_denoising(
    split: ValidationSplit,
    infos: Mapping[str, CategoryInfo],
    embedder: PatchEmbedder,
    config: BankConfig,
    methods: Sequence[str],
    denoise: DenoiseSettings,
    planted_share: float,
    *,
    default: str = "none",
    min_gain: float = 0.0,
    per_image: int = 1,
    categories: Iterable[str] | None = None,
    scratch_dir: str | Path | None = None,
) -> DenoiseChoice:
    """Every method on every category's planted folder; the best ``val_auroc`` per category.

    ``default`` (the run's ``coreset.denoise``) is evaluated first and kept unless another
    method beats it by more than ``min_gain``; ties go to the earlier method.
    """
    methods = [default] + [m for m in methods if m != default]
    wanted = None if categories is None else set(categories)
    tables = []
    for category, (train, validation) in split.by_category().items():
        if wanted is not None and category not in wanted:
            continue
        tables.append(
            evaluate_denoising(
                train, validation, infos[category], embedder, config, methods, denoise, planted_share,
                per_image=per_image, scratch_dir=scratch_dir,
            )
        )
    if not tables:
        raise ValueError("no category to choose a denoising method for")
    table = pd.concat(tables, ignore_index=True)
    table["is_default"] = table["denoise"] == default
    chosen = {}
    for category, rows in table.groupby("category", sort=True):
        baseline = float(rows.loc[rows["is_default"], "val_auroc"].iloc[0])
        best = rows.loc[rows["val_auroc"].idxmax()]  # first of the best (methods in order)
        chosen[category] = str(best["denoise"]) if float(best["val_auroc"]) > baseline + min_gain else default
    table["chosen"] = [chosen[c] == m for c, m in zip(table["category"], table["denoise"], strict=True)]
    return DenoiseChoice(table, chosen)
