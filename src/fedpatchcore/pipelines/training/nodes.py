"""One client's lane: its training images -> patch features -> local coreset.

The centralized baseline is the same lane with a single client that holds every image.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from fedpatchcore.core.backbones import load_backbone, resolve_device, set_torch_threads
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.coreset import coreset_size
from fedpatchcore.core.data.types import TRAIN, category_info_from_dict, frame_to_samples
from fedpatchcore.core.extraction import ExtractedFeatures, extract_patch_features
from fedpatchcore.core.feature_store import select_coreset_streaming
from fedpatchcore.core.patchcore import PatchEmbedder

logger = logging.getLogger(__name__)

CENTRALIZED_CLIENT = "all"


def make_embedder(backbone: dict[str, Any], extraction: dict[str, Any]) -> PatchEmbedder:
    """The frozen pretrained feature extractor every client and the evaluator share."""
    set_torch_threads(extraction["num_threads"])
    device = resolve_device(backbone["device"])
    network = load_backbone(
        backbone["name"],
        weights_path=backbone.get("weights_path"),
        device=device,
        allow_download=bool(backbone.get("allow_download", False)),
    )
    return PatchEmbedder(network, neighbourhood=extraction["neighbourhood"], device=device)


def hold_all_training_images(dataset_index: pd.DataFrame) -> dict[str, list[str]]:
    """The centralized baseline's partition: one client holding every training image."""
    return {CENTRALIZED_CLIENT: sorted(dataset_index.loc[dataset_index["split"] == TRAIN, "key"])}


def extract_client_features(
    partition: dict[str, list[str]],
    dataset_index: pd.DataFrame,
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    coreset: dict[str, Any],
    seed: int,
    *,
    client_id: str,
) -> ExtractedFeatures:
    """Stream this client's training images through the backbone into feature files."""
    held = set(partition[client_id])
    samples = [s for s in frame_to_samples(dataset_index) if s.key in held]
    infos = {name: category_info_from_dict(info) for name, info in category_info.items()}
    scratch = Path(extraction["scratch_dir"])
    scratch.mkdir(parents=True, exist_ok=True)
    return extract_patch_features(
        samples,
        infos,
        make_embedder(backbone, extraction),
        tempfile.mkdtemp(prefix=f"client_{client_id}_", dir=scratch),
        batch_size=extraction["batch_size"],
        projection_dim=coreset["projection_dim"],
        seed=seed,
        num_workers=extraction["num_workers"],
        description=f"client {client_id}",
    )


def select_local_coreset(
    features: ExtractedFeatures,
    coreset: dict[str, Any],
    client_coreset_ratios: dict[str, float] | None,
    seed: int,
    *,
    client_id: str,
) -> dict[str, Any]:
    """Greedy k-center coreset of each category's patch vectors, gathered at full dimension."""
    ratio = (client_coreset_ratios or {}).get(client_id, coreset["ratio"])
    device = resolve_device(coreset["device"])
    banks, n_images = {}, {}
    for category, feature_file in features.files.items():
        k = coreset_size(feature_file.n_rows, ratio, coreset["max_size"])
        chosen = select_coreset_streaming(
            feature_file, k, seed=seed, num_starts=coreset["num_starts"], device=device
        )
        banks[category] = feature_file.gather(chosen)
        n_images[category] = features.n_images[category]
        logger.info(
            "client %s: %s coreset %d of %d patch vectors (ratio %.3g)",
            client_id,
            category,
            k,
            feature_file.n_rows,
            ratio,
        )
    return CategoryBanks(banks, n_images).to_arrays()
