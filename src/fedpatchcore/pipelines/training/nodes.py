"""One client's lane: its own training images -> patch features -> local coreset -> upload.

Thin calls of :mod:`fedpatchcore.core.federation.client`; the centralized baseline is the same
lane with a single client that holds every training image. Every node gets the run's
:data:`~fedpatchcore.core.federation.client.CLIENT_BLOCKS` as one dict, ``parameters``, and
turns it into the client's settings with ``ClientSettings.from_run``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.types import TRAIN, category_info_from_dict, frame_to_samples
from fedpatchcore.core.features import tuned_settings
from fedpatchcore.core.features.extraction import ExtractedFeatures, make_embedder
from fedpatchcore.core.federation import client
from fedpatchcore.core.tuning.split import unused_training_keys
from fedpatchcore.structure import CENTRALIZED_CLIENT


def hold_all_training_images(
    dataset_index: pd.DataFrame,
    validation: dict[str, Any] | None = None,
    seed: int = 0,
    dataset: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The centralized baseline's single client holds every training image (but the validation
    split's, with ``validation.enabled``, and those beyond ``dataset.train_shots`` per category)."""
    shots = (dataset or {}).get("train_shots", "all")
    held_out = unused_training_keys(frame_to_samples(dataset_index), validation, shots, seed)
    training = dataset_index.loc[(dataset_index["split"] == TRAIN) & ~dataset_index["key"].isin(held_out)]
    return training.sort_values("key").reset_index(drop=True)


def _manifest(client_id: str, settings: client.ClientSettings, applied: list) -> dict[str, Any]:
    return {"client": client_id, "heterogeneity": settings.heterogeneity.describe(), "images": applied}


def extract_client_features(
    training_images: pd.DataFrame, category_info: dict[str, Any], *, parameters: dict[str, Any], client_id: str
) -> tuple[ExtractedFeatures, dict[str, Any]]:
    """Stream this client's training images (and no one else's) through the backbone.

    Also returns the manifest of what ``heterogeneity.<client_id>`` did to each image.
    """
    infos = {name: category_info_from_dict(info) for name, info in category_info.items()}
    settings = client.ClientSettings.from_run(parameters, client_id)
    extraction = parameters["extraction"]
    features, applied = client.extract_features(
        frame_to_samples(training_images),
        infos,
        make_embedder(parameters["backbone"], extraction),
        extraction["scratch_dir"],
        settings,
    )
    return features, _manifest(client_id, settings, applied)


def extract_centralized_features(
    training_images: pd.DataFrame,
    category_info: dict[str, Any],
    tuned: dict[str, Any],
    *,
    parameters: dict[str, Any],
    client_id: str,
) -> tuple[ExtractedFeatures, dict[str, Any]]:
    """:func:`extract_client_features`, each category with its ``tuned`` setting (if it has one):
    what every client lane runs, a federated client's and the centralized baseline's alike.

    Without ``tuned`` entries this is exactly :func:`extract_client_features`. Otherwise the
    categories are extracted in groups sharing one network, each at its setting's input size;
    the categories' feature files may then differ in dimension (one bank per category; every
    client extracts a category with the same setting, so the server merges like with like).
    """
    if not tuned:
        return extract_client_features(training_images, category_info, parameters=parameters, client_id=client_id)
    backbone, extraction = parameters["backbone"], parameters["extraction"]
    infos = {name: category_info_from_dict(info) for name, info in category_info.items()}
    samples = frame_to_samples(training_images)
    per_category = tuned_settings.category_settings({s.category for s in samples}, backbone, extraction, {}, tuned)
    settings = client.ClientSettings.from_run(parameters, client_id)
    merged: ExtractedFeatures | None = None
    applied_all: list = []
    for setting, categories in tuned_settings.groups(per_category):
        group_backbone, group_extraction, _ = tuned_settings.blocks_for(setting, backbone, extraction, {})
        group_infos = {c: tuned_settings.info_for(setting, infos[c]) for c in categories}
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
    return merged, _manifest(client_id, settings, applied_all)


def select_local_coreset(
    patch_features: ExtractedFeatures, *, parameters: dict[str, Any], client_id: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Greedy k-center coreset per category; the rows' image and position stay on the client.

    A client holding several categories splits its coreset budget among them by ``fairness``.
    With ``privacy.enabled`` the coreset is chosen among the client's differentially private
    release only. Also returns the privacy budget the client spent (its own JSON file).
    """
    settings = client.ClientSettings.from_run(parameters, client_id)
    local = client.select_local_coreset(patch_features, settings)
    return local.to_arrays(), client.privacy_budget(local, settings)


def prepare_upload(
    local_coreset: dict[str, np.ndarray], *, parameters: dict[str, Any], client_id: str
) -> dict[str, np.ndarray]:
    """Round 1: what the client sends to the server (its whole local coreset, no provenance)."""
    settings = client.ClientSettings.from_run(parameters, client_id)
    return client.build_upload(client.LocalCoreset.from_arrays(local_coreset), settings).to_arrays()


def prepare_later_upload(
    local_coreset: dict[str, np.ndarray],
    previous_bank: dict[str, np.ndarray],
    *,
    parameters: dict[str, Any],
    client_id: str,
) -> dict[str, np.ndarray]:
    """Round r > 1: only the local rows the broadcast global bank does not cover."""
    settings = client.ClientSettings.from_run(parameters, client_id)
    local = client.LocalCoreset.from_arrays(local_coreset)
    return client.build_upload(local, settings, CategoryBanks.from_arrays(previous_bank)).to_arrays()


def coreset_as_memory_bank(local_coreset: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The centralized baseline's coreset is its memory bank (no server in between)."""
    return client.as_bank(client.LocalCoreset.from_arrays(local_coreset), CENTRALIZED_CLIENT).to_arrays()
