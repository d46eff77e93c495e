"""One image explained against one variant's bank: what a person reads, the arrays behind it,
and the only pixels it may show.

:func:`explain_image` returns an :class:`Explanation` of three parts, split so that what may
be shown is checkable:

* ``explanation`` (JSON): per explained patch its position and score, and its nearest rows of
  the global bank, each with the client it came from and its patch position (y, x) in that
  client's image grid. The image a row came from is named only for the asking client's rows.
* ``crops``: pixels. ``query/p<i>`` are crops of the explained image itself; the only other
  entries are ``<asking client>/p<i>_n<j>``, crops of the asking client's OWN training images.
* ``arrays``: the explained image, its anomaly map, Grad-CAM and input-gradient maps, patch
  scores, ground truth (if known) and the SHAP values of the top patch.

**Only the asking client's pixels** (:func:`shown_neighbours`): a bank row's source patch is
cropped only when the row came from the asking client, through :class:`AskingClient`'s
``read`` of its own images; a row of any other client is named by client id and patch
position and carries no pixels (its images are never read). Which client asks, and that it
holds the explained category, is checked by :func:`asking_client_for` before anything is read.

No Kedro here: the ``explain`` pipeline's node unpacks parameters and calls these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.data.loading import load_image, load_mask
from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.explain.attribution import (
    DimensionAttribution,
    RowProvenance,
    nearest_bank_rows,
    patch_crop,
    patch_window,
    row_provenance,
    score_gradients,
    shap_dimensions,
    top_patches,
)
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.federation.client import LocalCoreset
from fedpatchcore.core.privacy.release import PublicTransform

logger = logging.getLogger(__name__)

QUERY = "query"  # crop keys of the explained image itself


@dataclass(frozen=True)
class ExplainSettings:
    """How much to explain (the ``explain`` block) and how scoring smooths maps."""

    top_patches: int  # most anomalous patches explained
    neighbours: int  # nearest bank rows shown per patch
    shap_background: int  # nearest rows of the top patch standing in for a left-out dimension
    shap_max_evals: int | None  # SHAP model evaluations (None: the fewest it accepts)
    shap_top_dimensions: int  # dimensions listed, largest |SHAP value| first
    sigma: float  # scoring.sigma: Gaussian smoothing of the anomaly map
    seed: int

    @classmethod
    def from_params(cls, explain: Mapping[str, Any], scoring: Mapping[str, Any], seed: int) -> ExplainSettings:
        max_evals = explain.get("shap_max_evals")
        return cls(
            top_patches=int(explain["top_patches"]),
            neighbours=int(explain["neighbours"]),
            shap_background=int(explain["shap_background"]),
            shap_max_evals=None if max_evals is None else int(max_evals),
            shap_top_dimensions=int(explain["shap_top_dimensions"]),
            sigma=float(scoring["sigma"]),
            seed=int(seed),
        )


@dataclass
class Explanation:
    explanation: dict[str, Any]  # JSON
    arrays: dict[str, np.ndarray]
    crops: dict[str, np.ndarray]  # the only pixels: the image's own patches and the asker's own


# ----------------------------------------------------------------------------------------
# which image, which client


def _resolve(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def locate_image(
    image: str | None, category: str | None, samples: Iterable[Sample], categories: Collection[str]
) -> tuple[Sample | None, str]:
    """The explained image's sample (when ``dataset_index`` holds it) and its category.

    ``category`` (``explain.category``) is needed only for an image outside the index; for an
    indexed image it must agree with the index.
    """
    if not image:
        raise InputError(
            "explain.image is not set: kedro run --pipeline explain --params \"explain.image=<path of an image>\""
        )
    if not Path(image).is_file():
        raise InputError(f"explain.image: no image file at {image}")
    wanted = _resolve(image)
    sample = next((s for s in samples if _resolve(s.image_path) == wanted), None)
    if sample is not None and category and category != sample.category:
        raise InputError(
            f"explain.category '{category}' contradicts dataset_index, where {image} is an image of "
            f"'{sample.category}': leave explain.category unset (the index says it) or set it to '{sample.category}'"
        )
    category = category or (sample.category if sample is not None else None)
    if category is None:
        raise InputError(
            f"explain.image {image} is not in dataset_index: name its category with explain.category "
            f"(one of {sorted(categories)})"
        )
    if category not in categories:
        raise InputError(f"explain.category '{category}' is not a category of this dataset ({sorted(categories)})")
    return sample, category


@dataclass
class AskingClient:
    """The client asking for an explanation: the one source of pixels besides the image itself."""

    client: str
    image_keys: Sequence[str]  # its images of the category, in its local coreset's image order
    read: Callable[[str], np.ndarray]  # one of ITS OWN images, by key, at the category's size


def clients_holding(category: str, local_coresets: Mapping[str, LocalCoreset]) -> list[str]:
    """Clients whose local coreset has images of ``category``."""
    return sorted(cid for cid, local in local_coresets.items() if local.image_keys.get(category))


def asking_client_for(
    client: str | None,
    category: str,
    local_coresets: Mapping[str, LocalCoreset],
    read_own_image: Callable[[str], np.ndarray],
    *,
    variant: str,
) -> AskingClient | None:
    """``explain.client`` as an :class:`AskingClient`, or None when nobody asks.

    A client that does not hold ``category`` has no pixels of it to be shown: refused, naming
    the clients that hold it.
    """
    if client is None:
        return None
    holders = clients_holding(category, local_coresets)
    if client not in holders:
        raise InputError(
            f"explain.client '{client}' does not hold category '{category}' in variant '{variant}': none of its "
            f"images are in that category's bank; the clients that hold it: {holders}"
        )
    return AskingClient(client, local_coresets[client].image_keys[category], read_own_image)


# ----------------------------------------------------------------------------------------
# where the nearest rows came from, and the one rule about pixels


@dataclass(frozen=True)
class BankSources:
    """One category's bank and where each of its rows came from: the client and its local
    coreset row (the bank records them), the image and patch position (each client's own
    local coreset records those)."""

    bank: np.ndarray
    origin: np.ndarray  # client id per row
    origin_row: np.ndarray  # row of that client's local coreset
    patch_sources: Mapping[str, np.ndarray]  # client -> (m, 3): image index, y, x per local row

    @classmethod
    def of(
        cls, banks: CategoryBanks, local_coresets: Mapping[str, LocalCoreset], category: str, *, variant: str
    ) -> BankSources:
        if category not in banks.banks:
            raise InputError(f"variant '{variant}' has no memory bank for category '{category}'")
        origin, origin_row = banks.origin.get(category), banks.origin_row.get(category)
        if origin is None or origin_row is None:
            raise ValueError(f"the memory bank of '{variant}' does not record where its {category} rows came from")
        sources = {cid: local.patch_source.get(category) for cid, local in local_coresets.items()}
        return cls(
            banks.banks[category], origin, origin_row, {cid: s for cid, s in sources.items() if s is not None}
        )

    def provenance(self, rows: Sequence[int]) -> list[RowProvenance]:
        return row_provenance(self.origin, self.origin_row, self.patch_sources, rows)


def shown_neighbours(
    rank: int,
    provenances: Sequence[RowProvenance],
    distances: Sequence[float],
    asking: AskingClient | None,
    crop: Callable[[np.ndarray, int, int], np.ndarray],
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The nearest rows of explained patch ``rank`` as the explanation shows them, and their pixels.

    THE RULE: a row's source image is read (``asking.read``) and cropped (``crop(image, y, x)``)
    only when the row came from the asking client; every other row is its client id, its
    local-coreset row and patch position, with ``image`` and ``crop`` None.
    """
    own_pixels: dict[str, np.ndarray] = {}
    entries, crops = [], {}
    for j, (provenance, distance) in enumerate(zip(provenances, distances, strict=True)):
        entry = {
            "bank_row": provenance.bank_row,
            "distance": float(distance),
            "client": provenance.client,
            "client_row": provenance.client_row,
            "patch": None if provenance.y is None else [provenance.y, provenance.x],
            "image": None,
            "crop": None,
        }
        if asking is not None and provenance.client == asking.client and provenance.image_index is not None:
            key = asking.image_keys[provenance.image_index]
            if key not in own_pixels:
                own_pixels[key] = asking.read(key)
            crop_key = f"{asking.client}/p{rank}_n{j}"
            crops[crop_key] = crop(own_pixels[key], provenance.y, provenance.x)
            entry.update(image=key, crop=crop_key)
        entries.append(entry)
    return entries, crops


# ----------------------------------------------------------------------------------------
# the explanation


def _explained_patches(
    image: np.ndarray,
    features: np.ndarray,
    patch_scores: np.ndarray,
    sources: BankSources,
    settings: ExplainSettings,
    asking: AskingClient | None,
    stride: int,
    crop_size: int,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The top patches with their nearest rows; their crops; their positions and vectors."""

    def crop(pixels: np.ndarray, y: int, x: int) -> np.ndarray:
        return patch_crop(pixels, y, x, stride, crop_size)

    positions = top_patches(patch_scores, settings.top_patches)
    queries = features[positions[:, 0], positions[:, 1]]
    distances, rows = nearest_bank_rows(sources.bank, queries, settings.neighbours)
    patches, crops = [], {}
    for rank, ((y, x), patch_distances, patch_rows) in enumerate(zip(positions, distances, rows, strict=True)):
        y, x = int(y), int(x)
        crops[f"{QUERY}/p{rank}"] = crop(image, y, x)
        neighbours, own = shown_neighbours(rank, sources.provenance(patch_rows), patch_distances, asking, crop)
        crops.update(own)
        patches.append(
            {
                "rank": rank,
                "patch": [y, x],
                "score": float(patch_scores[y, x]),
                "window": list(patch_window(y, x, stride, crop_size, image.shape[:2])),
                "neighbours": neighbours,
            }
        )
    return patches, crops, positions, queries


def _stage(dimension: int, shallow_channels: int | None) -> str:
    if shallow_channels is None:
        return "projected"
    return "shallow" if dimension < shallow_channels else "deep"


def _shap_summary(
    attribution: DimensionAttribution,
    top: np.ndarray,
    background_rows: np.ndarray,
    shallow_channels: int | None,
    top_dimensions: int,
) -> dict[str, Any]:
    """The SHAP part of the explanation: the largest dimensions, named by backbone stage and channel.

    ``shallow_channels`` None: the dimensions are a public projection's, which mixes both stages.
    """
    order = np.argsort(-np.abs(attribution.values), kind="stable")[:top_dimensions]
    return {
        "patch": [int(top[0]), int(top[1])],
        "base_value": attribution.base_value,
        "patch_distance": attribution.patch_distance,
        "background_rows": [int(r) for r in background_rows],
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
    }


def explain_image(
    image_path: str,
    sample: Sample | None,
    category: str,
    info: CategoryInfo,
    sources: BankSources,
    embedder: PatchEmbedder,
    settings: ExplainSettings,
    asking: AskingClient | None,
    *,
    variant: str,
    public_map: PublicTransform | None = None,
) -> Explanation:
    """Why ``image_path`` (of ``category``; ``sample`` when the index holds it) scores as it does
    against ``sources.bank``: see the module doc for the three parts.

    ``public_map``: a private rows bank holds released rows, so the image's patches go through
    the same public projection and clipping before they meet it (neighbours, gradients, SHAP).
    """
    image = load_image(image_path, info.image_size)
    features = embedder.embed(image[None])[0]  # (h, w, d)
    if public_map is not None:
        features = public_map(features)
    gradients = score_gradients(embedder, image, sources.bank, settings.sigma, public_map)
    stride = int(embedder.backbone.strides[0])
    crop_size = stride * int(embedder.neighbourhood)  # the pixels one patch vector summarises
    patches, crops, positions, queries = _explained_patches(
        image, features, gradients.patch_scores, sources, settings, asking, stride, crop_size
    )

    top = positions[0]
    # SHAP's background: the top patch's nearest normal rows (as many as shap_background asks).
    _, background_rows = nearest_bank_rows(sources.bank, queries[:1], settings.shap_background)
    attribution = shap_dimensions(
        features[top[0], top[1]],
        sources.bank,
        sources.bank[background_rows[0]],
        max_evals=settings.shap_max_evals,
        seed=settings.seed,
    )
    # Projected dimensions mix both stages: no stage can be named for them.
    projected = public_map is not None and public_map.matrix is not None
    shallow_channels = None if projected else int(embedder.backbone.channels[0])
    explanation = {
        "image": str(image_path),
        "key": sample.key if sample is not None else None,
        "category": category,
        "label": sample.label if sample is not None else None,
        "variant": variant,
        "asking_client": asking.client if asking is not None else None,
        "image_score": gradients.image_score,
        "peak": list(gradients.peak),
        "grid": list(gradients.patch_scores.shape),
        "stride": stride,
        "crop_size": crop_size,
        "patches": patches,
        "shap": _shap_summary(
            attribution, top, background_rows[0], shallow_channels, settings.shap_top_dimensions
        ),
    }
    arrays = {
        "image": image,
        "anomaly_map": gradients.anomaly_map,
        "gradcam": gradients.gradcam,
        "input_gradient": gradients.input_gradient,
        "patch_scores": gradients.patch_scores,
        "shap_values": attribution.values,
    }
    if sample is not None and info.has_pixel_ground_truth:
        arrays["mask"] = load_mask(sample, info)
    logger.info(
        "explain %s (%s) against %s: score %.3f; top patch %s; nearest rows from clients %s",
        explanation["key"] or image_path,
        category,
        variant,
        gradients.image_score,
        tuple(int(v) for v in top),
        sorted({n["client"] for p in patches for n in p["neighbours"]}),
    )
    return Explanation(explanation, arrays, crops)
