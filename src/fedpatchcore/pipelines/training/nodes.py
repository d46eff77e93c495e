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
from fedpatchcore.core.features.extraction import ExtractedFeatures
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
    training_images: pd.DataFrame,
    category_info: dict[str, Any],
    tuned: dict[str, Any] | None = None,
    *,
    parameters: dict[str, Any],
    client_id: str,
) -> tuple[ExtractedFeatures, dict[str, Any]]:
    """Stream this client's training images (and no one else's) through the backbone, each
    category with its ``tuned`` setting if it has one (every client lane, federated or the
    centralized baseline's: :func:`~fedpatchcore.core.federation.client.extract_tuned_features`).

    Also returns the manifest of what ``heterogeneity.<client_id>`` did to each image.
    """
    infos = {name: category_info_from_dict(info) for name, info in category_info.items()}
    settings = client.ClientSettings.from_run(parameters, client_id)
    extraction = parameters["extraction"]
    features, applied = client.extract_tuned_features(
        frame_to_samples(training_images),
        infos,
        parameters["backbone"],
        extraction,
        tuned,
        extraction["scratch_dir"],
        settings,
    )
    return features, _manifest(client_id, settings, applied)


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

