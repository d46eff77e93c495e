"""Explain one image: its most anomalous patches, their nearest bank rows and where those came from.

``kedro run --pipeline explain --params "explain.image=<path>,explain.client=<id>"``

The explanation is split so that what may be shown is checkable:

* ``explanation`` (JSON): per explained patch its position and score, and its nearest rows of
  the global bank, each with the client it came from and its patch position (y, x) in that
  client's image grid. The image it came from is named only for the asking client's own rows.
* ``crops`` (npz): pixels. ``query/p<i>`` are crops of the explained image itself; the only
  other entries are ``<asking client>/p<i>_n<j>``, crops of the asking client's OWN training
  images. Rows of every other client have no entry: their pixels never leave them.
* ``arrays`` (npz): the explained image, its anomaly map, Grad-CAM and input-gradient maps,
  patch scores, ground truth (if known) and the SHAP values of the top patch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.loading import load_image, load_mask
from fedpatchcore.core.data.types import category_info_from_dict, frame_to_samples
from fedpatchcore.core.explain.attribution import (
    nearest_bank_rows,
    patch_crop,
    patch_window,
    row_provenance,
    score_gradients,
    shap_dimensions,
    top_patches,
)
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.federation.client import LocalCoreset
from fedpatchcore.core.privacy.release import PrivacySettings, public_transform

logger = logging.getLogger(__name__)

QUERY = "query"  # crop keys of the explained image itself


def _resolve(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _locate(image: str | None, category: str | None, dataset_index: pd.DataFrame, category_info: dict[str, Any]):
    """The explained image's sample (when it is indexed) and its category."""
    if not image:
        raise ValueError(
            "explain.image is not set: kedro run --pipeline explain --params \"explain.image=<path of an image>\""
        )
    if not Path(image).is_file():
        raise FileNotFoundError(f"explain.image: no image file at {image}")
    wanted = _resolve(image)
    sample = next((s for s in frame_to_samples(dataset_index) if _resolve(s.image_path) == wanted), None)
    category = category or (sample.category if sample is not None else None)
    if category is None:
        raise ValueError(
            f"explain.image {image} is not in dataset_index: name its category with explain.category "
            f"(one of {sorted(category_info)})"
        )
    if category not in category_info:
        raise ValueError(f"explain.category '{category}' is not a category of this dataset ({sorted(category_info)})")
    return sample, category


def _stage(dimension: int, shallow_channels: int | None) -> str:
    if shallow_channels is None:
        return "projected"
    return "shallow" if dimension < shallow_channels else "deep"


def explain_image(
    explain: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    scoring: dict[str, Any],
    seed: int,
    privacy: dict[str, Any],
    memory_bank: dict[str, np.ndarray],
    dataset_index: pd.DataFrame,
    category_info: dict[str, Any],
    *client_inputs: Any,
    variant: str,
    client_ids: list[str],
    asking_client: str | None,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Explanation (JSON), arrays and pixel crops of ``explain.image`` against ``variant``'s bank.

    ``client_inputs``: each client's local coreset (``client_ids`` order), then, when there is
    an asking client, that client's own training-image table (where its crops come from).
    A private rows bank holds released rows: the image's patches go through the same public
    projection and clipping before they meet it (neighbours, gradients and SHAP alike).
    """
    local_coresets = dict(zip(client_ids, client_inputs[: len(client_ids)], strict=True))
    own_images = client_inputs[len(client_ids)] if asking_client is not None else None
    sample, category = _locate(explain.get("image"), explain.get("category"), dataset_index, category_info)
    info = category_info_from_dict(category_info[category])
    banks = CategoryBanks.from_arrays(memory_bank)
    if banks.radius:
        raise ValueError(
            f"variant '{variant}' has a private summary bank (centres and radii, no client rows): explain shows "
            "the nearest client rows of a row bank"
        )
    if category not in banks.banks:
        raise ValueError(f"variant '{variant}' has no memory bank for category '{category}'")
    bank = banks.banks[category]

    image = load_image(explain["image"], info.image_size)
    mask = load_mask(sample, info) if sample is not None and info.has_pixel_ground_truth else None
    embedder = make_embedder(backbone, extraction)
    public_map = public_transform(PrivacySettings.from_parameters(privacy, seed), embedder.feature_dim)
    features = embedder.embed(image[None])[0]  # (h, w, d)
    if public_map is not None:
        features = public_map(features)
    gradients = score_gradients(embedder, image, bank, float(scoring["sigma"]), public_map)
    stride = int(embedder.backbone.strides[0])
    crop_size = stride * int(extraction["neighbourhood"])  # the pixels one patch vector summarises

    positions = top_patches(gradients.patch_scores, int(explain["top_patches"]))
    queries = features[positions[:, 0], positions[:, 1]]
    distances, rows = nearest_bank_rows(bank, queries, int(explain["neighbours"]))

    # Position of every row: asked from the client that owns it (its local coreset never leaves it).
    locals_ = {cid: LocalCoreset.from_arrays(arrays) for cid, arrays in local_coresets.items()}
    sources = {cid: local.patch_source.get(category) for cid, local in locals_.items()}
    sources = {cid: source for cid, source in sources.items() if source is not None}
    origin = banks.origin.get(category)
    origin_row = banks.origin_row.get(category)
    if origin is None or origin_row is None:
        raise ValueError(f"the memory bank of '{variant}' does not record where its {category} rows came from")

    own_paths = {}
    if own_images is not None:
        own_paths = dict(zip(own_images["key"], own_images["image_path"], strict=True))
    own_keys = locals_[asking_client].image_keys.get(category, []) if asking_client is not None else []
    own_pixels: dict[str, np.ndarray] = {}

    crops: dict[str, np.ndarray] = {}
    patches = []
    for rank, ((y, x), patch_distances, patch_rows) in enumerate(zip(positions, distances, rows, strict=True)):
        crops[f"{QUERY}/p{rank}"] = patch_crop(image, int(y), int(x), stride, crop_size)
        neighbours = []
        for j, provenance in enumerate(row_provenance(origin, origin_row, sources, patch_rows)):
            entry = {
                "bank_row": provenance.bank_row,
                "distance": float(patch_distances[j]),
                "client": provenance.client,
                "client_row": provenance.client_row,
                "patch": None if provenance.y is None else [provenance.y, provenance.x],
                "image": None,
                "crop": None,
            }
            if provenance.client == asking_client and provenance.image_index is not None:
                key = own_keys[provenance.image_index]
                if key not in own_pixels:
                    own_pixels[key] = load_image(own_paths[key], info.image_size)
                crop_key = f"{asking_client}/p{rank}_n{j}"
                crops[crop_key] = patch_crop(own_pixels[key], provenance.y, provenance.x, stride, crop_size)
                entry.update(image=key, crop=crop_key)
            neighbours.append(entry)
        patches.append(
            {
                "rank": rank,
                "patch": [int(y), int(x)],
                "score": float(gradients.patch_scores[y, x]),
                "window": list(patch_window(int(y), int(x), stride, crop_size, image.shape[:2])),
                "neighbours": neighbours,
            }
        )

    top = positions[0]
    # SHAP's background: the top patch's nearest normal rows (as many as shap_background asks).
    _, background_rows = nearest_bank_rows(bank, queries[:1], int(explain["shap_background"]))
    background = bank[background_rows[0]]
    attribution = shap_dimensions(
        features[top[0], top[1]], bank, background, max_evals=explain.get("shap_max_evals"), seed=seed
    )
    # Projected dimensions mix both stages: no stage can be named for them.
    shallow_channels = int(embedder.backbone.channels[0]) if public_map is None or public_map.matrix is None else None
    order = np.argsort(-np.abs(attribution.values), kind="stable")[: int(explain["shap_top_dimensions"])]
    explanation = {
        "image": str(explain["image"]),
        "key": sample.key if sample is not None else None,
        "category": category,
        "label": sample.label if sample is not None else None,
        "variant": variant,
        "asking_client": asking_client,
        "image_score": gradients.image_score,
        "peak": list(gradients.peak),
        "grid": list(gradients.patch_scores.shape),
        "stride": stride,
        "crop_size": crop_size,
        "patches": patches,
        "shap": {
            "patch": [int(top[0]), int(top[1])],
            "base_value": attribution.base_value,
            "patch_distance": attribution.patch_distance,
            "background_rows": [int(r) for r in background_rows[0]],
            "top_dimensions": [
                {
                    "dimension": int(d),
                    "stage": _stage(int(d), shallow_channels),
                    "channel": int(d if shallow_channels is None or d < shallow_channels else d - shallow_channels),
                    "value": float(attribution.values[d]),
                }
                for d in order
            ],
            "stage_totals": (
                {"projected": float(attribution.values.sum())}
                if shallow_channels is None
                else {
                    "shallow": float(attribution.values[:shallow_channels].sum()),
                    "deep": float(attribution.values[shallow_channels:].sum()),
                }
            ),
        },
    }
    arrays = {
        "image": image,
        "anomaly_map": gradients.anomaly_map,
        "gradcam": gradients.gradcam,
        "input_gradient": gradients.input_gradient,
        "patch_scores": gradients.patch_scores,
        "shap_values": attribution.values,
    }
    if mask is not None:
        arrays["mask"] = mask
    logger.info(
        "explain %s (%s) against %s: score %.3f; top patch %s; nearest rows from clients %s",
        explanation["key"] or explain["image"],
        category,
        variant,
        gradients.image_score,
        tuple(int(v) for v in top),
        sorted({n["client"] for p in patches for n in p["neighbours"]}),
    )
    return explanation, arrays, crops


def unknown_variant(explain: dict[str, Any], *, known: list[str]) -> None:
    """Stand-in when ``explain.variant`` names no variant of this run: says which ones exist."""
    raise ValueError(f"explain.variant '{explain.get('variant')}' is not a variant of this run; variants: {known}")


def unknown_client(explain: dict[str, Any], *, client: str, known: list[str]) -> None:
    """Stand-in when ``explain.client`` is no client of the explained variant."""
    raise ValueError(
        f"explain.client '{client}' is not a client of variant '{explain.get('variant')}'; its clients: {known}"
    )
