"""One client's lane: its own training images -> patch features -> local coreset -> upload.

Thin calls of :mod:`fedpatchcore.core.federation.client`; the centralized baseline is the same
lane with a single client that holds every training image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.types import TRAIN, category_info_from_dict, frame_to_samples
from fedpatchcore.core.features.extraction import ExtractedFeatures, make_embedder
from fedpatchcore.core.federation import client
from fedpatchcore.pipelines import settings as run_settings
from fedpatchcore.pipelines.ingest.nodes import unused_training_keys

CENTRALIZED_CLIENT = "all"


def _settings(
    client_id, coreset, federation, extraction, seed, heterogeneity=None, fairness=None, privacy=None
) -> client.ClientSettings:
    return client.ClientSettings.from_parameters(
        client_id,
        coreset=coreset,
        federation=federation,
        extraction=extraction,
        seed=seed,
        heterogeneity=heterogeneity,
        fairness=fairness,
        privacy=privacy,
    )


def hold_all_training_images(
    dataset_index: pd.DataFrame,
    validation: dict[str, Any] | None = None,
    seed: int = 0,
    dataset: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The centralized baseline's single client holds every training image (but the validation
    split's, with ``validation.enabled``, and those beyond ``dataset.train_shots`` per category)."""
    held_out = unused_training_keys(dataset_index, validation, dataset, seed)
    training = dataset_index.loc[(dataset_index["split"] == TRAIN) & ~dataset_index["key"].isin(held_out)]
    return training.sort_values("key").reset_index(drop=True)


def extract_client_features(
    training_images: pd.DataFrame,
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    coreset: dict[str, Any],
    federation: dict[str, Any],
    extraction: dict[str, Any],
    seed: int,
    heterogeneity: dict[str, Any],
    *,
    client_id: str,
) -> tuple[ExtractedFeatures, dict[str, Any]]:
    """Stream this client's training images (and no one else's) through the backbone.

    Also returns the manifest of what ``heterogeneity.<client_id>`` did to each image.
    """
    infos = {name: category_info_from_dict(info) for name, info in category_info.items()}
    settings = _settings(client_id, coreset, federation, extraction, seed, heterogeneity)
    features, applied = client.extract_features(
        frame_to_samples(training_images), infos, make_embedder(backbone, extraction), extraction["scratch_dir"], settings
    )
    return features, {"client": client_id, "heterogeneity": settings.heterogeneity.describe(), "images": applied}


def extract_centralized_features(
    training_images: pd.DataFrame,
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    coreset: dict[str, Any],
    federation: dict[str, Any],
    extraction: dict[str, Any],
    seed: int,
    heterogeneity: dict[str, Any],
    tuned: dict[str, Any],
    *,
    client_id: str,
) -> tuple[ExtractedFeatures, dict[str, Any]]:
    """:func:`extract_client_features`, each category with its ``tuned`` setting (if it has one):
    what every client lane runs, a federated client's and the centralized baseline's alike.

    Without ``tuned`` entries this is exactly :func:`extract_client_features`. Otherwise the
    categories are extracted in groups sharing one network, each at its setting's input size;
    the categories' feature files may then differ in dimension (one bank per category; every
    client extracts a category with the same setting, so the server merges like with like).
    """
    args = (coreset, federation, extraction, seed, heterogeneity)
    if not tuned:
        return extract_client_features(training_images, category_info, backbone, *args, client_id=client_id)
    infos = {name: category_info_from_dict(info) for name, info in category_info.items()}
    samples = frame_to_samples(training_images)
    per_category = run_settings.category_settings(
        {s.category for s in samples}, backbone, extraction, {}, tuned
    )
    settings = _settings(client_id, coreset, federation, extraction, seed, heterogeneity)
    merged: ExtractedFeatures | None = None
    applied_all: list = []
    for setting, categories in run_settings.groups(per_category):
        group_backbone, group_extraction, _ = run_settings.blocks_for(setting, backbone, extraction, {})
        group_infos = {c: run_settings.info_for(setting, infos[c]) for c in categories}
        features, applied = client.extract_features(
            [s for s in samples if s.category in group_infos],
            group_infos,
            make_embedder(group_backbone, group_extraction),
            extraction["scratch_dir"],
            settings,
        )
        applied_all.extend(applied)
        if merged is None:
            merged = features
            continue
        merged.files.update(features.files)
        merged.image_keys.update(features.image_keys)
        merged.grid.update(features.grid)
        merged.skipped.extend(features.skipped)
        merged.numbers.update(features.numbers)
    manifest = {"client": client_id, "heterogeneity": settings.heterogeneity.describe(), "images": applied_all}
    return merged, manifest


def select_local_coreset(
    patch_features: ExtractedFeatures,
    coreset: dict[str, Any],
    federation: dict[str, Any],
    extraction: dict[str, Any],
    seed: int,
    fairness: dict[str, Any],
    privacy: dict[str, Any],
    *,
    client_id: str,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Greedy k-center coreset per category; the rows' image and position stay on the client.

    A client holding several categories splits its coreset budget among them by ``fairness``.
    With ``privacy.enabled`` the coreset is chosen among the client's differentially private
    release only. Also returns the privacy budget the client spent (its own JSON file).
    """
    settings = _settings(client_id, coreset, federation, extraction, seed, fairness=fairness, privacy=privacy)
    local = client.select_local_coreset(patch_features, settings)
    return local.to_arrays(), client.privacy_budget(local, settings)


def prepare_upload(
    local_coreset: dict[str, np.ndarray],
    coreset: dict[str, Any],
    federation: dict[str, Any],
    extraction: dict[str, Any],
    seed: int,
    *,
    client_id: str,
) -> dict[str, np.ndarray]:
    """Round 1: what the client sends to the server (its whole local coreset, no provenance)."""
    settings = _settings(client_id, coreset, federation, extraction, seed)
    return client.build_upload(client.LocalCoreset.from_arrays(local_coreset), settings).to_arrays()


def prepare_later_upload(
    local_coreset: dict[str, np.ndarray],
    previous_bank: dict[str, np.ndarray],
    coreset: dict[str, Any],
    federation: dict[str, Any],
    extraction: dict[str, Any],
    seed: int,
    *,
    client_id: str,
) -> dict[str, np.ndarray]:
    """Round r > 1: only the local rows the broadcast global bank does not cover."""
    settings = _settings(client_id, coreset, federation, extraction, seed)
    local = client.LocalCoreset.from_arrays(local_coreset)
    return client.build_upload(local, settings, CategoryBanks.from_arrays(previous_bank)).to_arrays()


def coreset_as_memory_bank(local_coreset: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The centralized baseline's coreset is its memory bank (no server in between)."""
    return client.as_bank(client.LocalCoreset.from_arrays(local_coreset), CENTRALIZED_CLIENT).to_arrays()
