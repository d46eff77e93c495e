"""Choose PatchCore settings per category on a validation split of the training images only.

Thin calls of :mod:`fedpatchcore.core.tuning.tuner`: the split (``validation_split``, seeded by
``seed`` and ``validation.fraction``) and the tuner, which builds a bank per candidate from the
split's bank images and scores the validation images and their seeded pseudo-anomalies. Test
images are dropped from ``dataset_index`` before anything is loaded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from fedpatchcore.core.coreset.denoise import DenoiseSettings
from fedpatchcore.core.data.types import TRAIN, category_info_from_dict, frame_to_samples
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.features.setting import Setting
from fedpatchcore.core.tuning.denoise_choice import DENOISE_TABLE_COLUMNS, choose_denoising
from fedpatchcore.core.tuning.split import ValidationSplit
from fedpatchcore.core.tuning.tuner import BankConfig, candidate_grid, tune

logger = logging.getLogger(__name__)


def validation_split_samples(dataset_index: pd.DataFrame, validation_split: pd.DataFrame) -> ValidationSplit:
    """The persisted split as samples; only training rows of ``dataset_index`` are turned into samples."""
    training = dataset_index.loc[dataset_index["split"] == TRAIN]
    role = dict(zip(validation_split["key"].astype(str), validation_split["role"], strict=True))
    samples = [s for s in frame_to_samples(training) if s.key in role]
    return ValidationSplit(
        train=[s for s in samples if role[s.key] == "bank"],
        validation=[s for s in samples if role[s.key] == "validation"],
    )


def candidates_from_parameters(
    tune_params: dict[str, Any], backbone: dict[str, Any], extraction: dict[str, Any], scoring: dict[str, Any]
) -> tuple[Setting, list[Setting]]:
    """The run's own setting (the default, first) and every candidate of ``tune``."""
    default = Setting.from_params(backbone, extraction, scoring)
    weights = {backbone["name"]: backbone.get("weights_path")} if backbone.get("weights_path") else {}
    weights.update(tune_params.get("weights_paths") or {})
    grid = candidate_grid(
        backbones=tune_params["backbones"],
        layers=tune_params.get("layers") or {},
        image_sizes=tune_params.get("image_sizes") or [None],
        scorings=tune_params["scorings"],
        neighbourhoods=tune_params.get("neighbourhoods") or [3],
        weights_paths=weights,
        default=default,
    )
    return default, grid


def tune_settings(
    dataset_index: pd.DataFrame,
    validation_split: pd.DataFrame,
    category_info: dict[str, Any],
    tune_params: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    coreset: dict[str, Any],
    scoring: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    """``tune.csv`` (category, setting, val_auroc, chosen, ...), the report and the tuned parameters."""
    started = time.perf_counter()
    Path(extraction["scratch_dir"]).mkdir(parents=True, exist_ok=True)
    split = validation_split_samples(dataset_index, validation_split)
    infos = {name: category_info_from_dict(info) for name, info in category_info.items()}
    default, grid = candidates_from_parameters(tune_params, backbone, extraction, scoring)
    config = BankConfig.from_params(coreset, extraction, scoring, seed=seed, device=backbone.get("device", "cpu"))
    logger.info("Tuning %d candidate settings per category (default first: %s)", len(grid), default.name)
    result = tune(
        [],
        infos,
        grid,
        config,
        default=default,
        per_image=int(tune_params.get("pseudo_anomalies_per_image", 4)),
        min_gain=float(tune_params.get("min_gain", 0.0)),
        categories=tune_params.get("categories"),
        scratch_dir=extraction["scratch_dir"],
        split=split,
    )
    seconds = time.perf_counter() - started
    report = result.report() + (
        f"\n{len(grid)} candidates x {result.table['category'].nunique()} categories in {seconds:.0f} s. "
        "Apply the choice with `kedro run --pipeline centralized --env tuned` (conf/tuned/parameters.yml).\n"
    )
    for category, setting in sorted(result.chosen.items()):
        logger.info("tune: %s -> %s", category, setting.name)
    return result.table, report, result.parameters()


def tune_denoising(
    dataset_index: pd.DataFrame,
    validation_split: pd.DataFrame,
    category_info: dict[str, Any],
    tune_params: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    coreset: dict[str, Any],
    scoring: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``denoise_tune.csv`` (category x method on a planted training folder) and the choice as
    parameters (``coreset.denoise_by_category``); nothing when ``tune.denoise_methods`` is empty."""
    methods = list(tune_params.get("denoise_methods") or [])
    if not methods:
        return pd.DataFrame(columns=DENOISE_TABLE_COLUMNS), {}
    Path(extraction["scratch_dir"]).mkdir(parents=True, exist_ok=True)
    split = validation_split_samples(dataset_index, validation_split)
    infos = {name: category_info_from_dict(info) for name, info in category_info.items()}
    config = BankConfig.from_params(coreset, extraction, scoring, seed=seed, device=backbone.get("device", "cpu"))
    choice = choose_denoising(
        split,
        infos,
        make_embedder(backbone, extraction),
        config,
        methods,
        DenoiseSettings.from_parameters(coreset),
        float(tune_params["planted_share"]),
        default=str(coreset.get("denoise", "none")),
        min_gain=float(tune_params.get("min_gain", 0.0)),
        per_image=int(tune_params.get("pseudo_anomalies_per_image", 4)),
        categories=tune_params.get("categories"),
        scratch_dir=extraction["scratch_dir"],
    )
    for category, method in sorted(choice.chosen.items()):
        logger.info("tune denoising: %s -> %s", category, method)
    return choice.table, choice.parameters()
