"""Why was this image flagged? Nearest normal bank rows with provenance, saliency, SHAP.

For one test image of one category, against one variant's global memory bank:

* :func:`patch_scores` / :func:`top_patches`: distance of every patch to its nearest bank row
  (exactly as scoring computes it) and the most anomalous patches.
* :func:`nearest_bank_rows`: the ``k`` nearest bank rows of a patch vector (exact search).
* :func:`row_provenance`: where a bank row came from. The server knows only the client
  (``origin``) and the row of that client's local coreset (``origin_row``); the client's
  local coreset knows the image and patch position (``patch_source``). Pixels never leave a
  client: :func:`patch_crop` is only ever applied to the asking client's own images.
* :func:`score_gradients`: gradient of the image score through the backbone: a Grad-CAM map
  on the backbone's two feature stages and the input-gradient magnitude. The image score is
  the max of the raw anomaly map, which is linear in the patch scores (bilinear upsampling,
  then a Gaussian), so it is differentiated exactly as scoring computes it.
* :func:`shap_dimensions`: SHAP values of the patch-embedding dimensions for the distance of
  one patch to the bank (the ``shap`` package's permutation explainer).

No Kedro here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

from fedpatchcore.core.banks.knn import build_index, exact_nearest_distances, nearest_neighbours
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.privacy.release import PublicTransform
from fedpatchcore.core.scoring.patch_scores import anomaly_maps


def _public_map_torch(flat: torch.Tensor, public_map: PublicTransform) -> torch.Tensor:
    """:class:`~fedpatchcore.core.privacy.release.PublicTransform` on a torch tensor (differentiable)."""
    if public_map.matrix is not None:
        flat = flat @ torch.from_numpy(public_map.matrix).to(flat.device, flat.dtype)
    if np.isfinite(public_map.clip_norm):
        norms = flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        flat = flat * (float(public_map.clip_norm) * (1.0 - 1e-6) / norms).clamp(max=1.0)
    return flat


# ----------------------------------------------------------------------------------------
# nearest rows and where they came from
# ----------------------------------------------------------------------------------------


def patch_scores(bank: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each patch ``(h, w, d)`` to its nearest bank row, and that row: ``(h, w)`` each."""
    h, w, d = features.shape
    distances, rows = nearest_neighbours(build_index(bank), features.reshape(-1, d), k=1)
    return distances[:, 0].reshape(h, w), rows[:, 0].reshape(h, w)


def top_patches(scores: np.ndarray, count: int) -> np.ndarray:
    """``(count, 2)`` grid positions (y, x) of the highest patch scores, highest first.

    Equal scores keep row-major order.
    """
    flat = np.asarray(scores).ravel()
    order = np.argsort(-flat, kind="stable")[: max(0, int(count))]
    return np.stack(np.unravel_index(order, np.asarray(scores).shape), axis=1).astype(np.int64)


def nearest_bank_rows(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances and bank row ids ``(n, k)`` of the ``k`` nearest rows (exact search)."""
    k = int(min(k, len(bank)))
    return nearest_neighbours(build_index(bank), np.asarray(queries, dtype=np.float32), k=k)


@dataclass(frozen=True)
class RowProvenance:
    """Where one global-bank row came from."""

    bank_row: int
    client: str  # the client that uploaded it
    client_row: int  # its row in that client's local coreset
    image_index: int | None  # index into that client's image_keys (None: unknown to this caller)
    y: int | None  # patch position in that image's patch grid
    x: int | None


def row_provenance(
    origin: np.ndarray,
    origin_row: np.ndarray,
    patch_sources: Mapping[str, np.ndarray],
    rows: Sequence[int],
) -> list[RowProvenance]:
    """Provenance of bank ``rows``: client and local-coreset row from the bank, then image
    index and patch position from that client's ``patch_source`` (``(m, 3)``: image, y, x).

    A client missing from ``patch_sources`` leaves image and position unknown (None).
    """
    out = []
    for row in rows:
        client = str(origin[row])
        client_row = int(origin_row[row])
        source = patch_sources.get(client)
        if source is None:
            out.append(RowProvenance(int(row), client, client_row, None, None, None))
            continue
        if not 0 <= client_row < len(source):
            raise ValueError(
                f"bank row {row} says it is row {client_row} of client '{client}', whose local coreset "
                f"has {len(source)} rows: the bank and the local coresets come from different runs"
            )
        image_index, y, x = (int(v) for v in source[client_row])
        out.append(RowProvenance(int(row), client, client_row, image_index, y, x))
    return out


def patch_window(y: int, x: int, stride: int, size: int, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box ``(top, left, bottom, right)`` of side ``size`` centred on patch (y, x) of a
    grid with ``stride`` pixels per patch, shifted to lie inside the image."""
    height, width = image_hw
    size = int(min(size, height, width))
    centre_y, centre_x = (y + 0.5) * stride, (x + 0.5) * stride
    top = int(np.clip(round(centre_y - size / 2), 0, height - size))
    left = int(np.clip(round(centre_x - size / 2), 0, width - size))
    return top, left, top + size, left + size


def patch_crop(image: np.ndarray, y: int, x: int, stride: int, size: int) -> np.ndarray:
    """The pixels around patch (y, x) of ``image`` ``(H, W[, 3])`` (see :func:`patch_window`)."""
    top, left, bottom, right = patch_window(y, x, stride, size, image.shape[:2])
    return np.ascontiguousarray(image[top:bottom, left:right])


# ----------------------------------------------------------------------------------------
# gradient saliency
# ----------------------------------------------------------------------------------------


def smoothing_row(length: int, sigma: float, index: int) -> np.ndarray:
    """Row ``index`` of the 1-D Gaussian smoothing operator :func:`anomaly_maps` applies.

    ``(gaussian_filter1d(u))[index] == smoothing_row(...) @ u`` for every ``u``, boundary
    handling included (the operator is built column by column from the identity).
    """
    if not sigma or sigma <= 0:
        row = np.zeros(length)
        row[index] = 1.0
        return row
    return gaussian_filter1d(np.eye(length), float(sigma), axis=0)[index]


@dataclass
class ScoreGradients:
    image_score: float  # max of the raw anomaly map, as scoring computes it
    peak: tuple[int, int]  # pixel (y, x) of that max
    patch_scores: np.ndarray  # (h, w) distance of each patch to its nearest bank row
    anomaly_map: np.ndarray  # (H, W) raw anomaly map
    gradcam: np.ndarray  # (H, W) in [0, 1]: Grad-CAM of the score, both backbone stages averaged
    input_gradient: np.ndarray  # (H, W) in [0, 1]: |d score / d pixel|, max over colour channels


def _normalised(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def _gradcam(activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    return _normalised(cam.detach().cpu().numpy())


def score_gradients(
    embedder: PatchEmbedder, image: np.ndarray, bank: np.ndarray, sigma: float, public_map: PublicTransform | None = None
) -> ScoreGradients:
    """The image score of ``image`` (uint8 ``(H, W, 3)``) against ``bank`` and its gradients.

    The nearest bank row of every patch is found exactly (as scoring does) and held fixed;
    the score is then the smoothed, upsampled patch-distance map at its peak pixel, written
    as a weighted sum of the upsampled map (:func:`smoothing_row` in y and x), so autograd
    differentiates exactly the number scoring reports. ``public_map``: a private bank's public
    projection and clipping, applied (differentiably) to the patch vectors first, as scoring does.
    """
    height, width = image.shape[:2]
    index = build_index(bank)
    pixels = embedder.to_tensor(image[None]).detach().requires_grad_(True)
    with torch.enable_grad():
        shallow, deep = embedder.backbone(pixels)
        shallow.retain_grad()
        deep.retain_grad()
        features = embedder._aggregate(shallow, deep)[0]  # (h, w, d)
        h, w, d = features.shape
        flat = features.reshape(-1, d)
        if public_map is not None:
            flat = _public_map_torch(flat, public_map)
            d = flat.shape[1]
        _, rows = nearest_neighbours(index, flat.detach().cpu().numpy(), k=1)
        nearest = torch.from_numpy(np.ascontiguousarray(bank[rows[:, 0]], dtype=np.float32)).to(flat.device)
        distances = ((flat - nearest) ** 2).sum(dim=1).clamp_min(1e-12).sqrt().reshape(h, w)
        upsampled = F.interpolate(distances[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        amap = anomaly_maps(distances.detach().cpu().numpy()[None], (width, height), sigma=sigma)[0]
        peak_y, peak_x = np.unravel_index(int(np.argmax(amap)), amap.shape)
        weights = np.outer(smoothing_row(height, sigma, int(peak_y)), smoothing_row(width, sigma, int(peak_x)))
        score = (torch.from_numpy(weights.astype(np.float32)).to(upsampled.device) * upsampled).sum()
        score.backward()
    stages = [_gradcam(a, a.grad, (height, width)) for a in (shallow, deep) if a.grad is not None]
    gradcam = _normalised(np.mean(stages, axis=0)) if stages else np.zeros((height, width), np.float32)
    input_gradient = _normalised(pixels.grad[0].abs().amax(dim=0).cpu().numpy())
    return ScoreGradients(
        image_score=float(amap.max()),
        peak=(int(peak_y), int(peak_x)),
        patch_scores=distances.detach().cpu().numpy(),
        anomaly_map=amap,
        gradcam=gradcam,
        input_gradient=input_gradient,
    )


# ----------------------------------------------------------------------------------------
# SHAP over embedding dimensions
# ----------------------------------------------------------------------------------------


@dataclass
class DimensionAttribution:
    values: np.ndarray  # (d,) SHAP value of each embedding dimension
    base_value: float  # expected distance with every dimension taken from the background rows
    patch_distance: float  # distance of the explained vector to its nearest bank row


def shap_dimensions(
    feature: np.ndarray,
    bank: np.ndarray,
    background: np.ndarray,
    *,
    max_evals: int | None,
    seed: int,
) -> DimensionAttribution:
    """SHAP values of each dimension of ``feature`` for its distance to the nearest row of ``bank``.

    A dimension left out takes its value from the ``background`` rows (e.g. the patch's
    nearest normal rows), so the values say which dimensions make this patch farther from
    the normal rows than they are themselves. Permutation explainer (efficient: values sum to
    ``patch_distance - base_value``); ``max_evals`` None means the fewest it accepts, 2 d + 1.
    """
    import shap  # imported here: shap pulls in numba, which a run without `explain` never needs

    feature = np.asarray(feature, dtype=np.float32).reshape(1, -1)
    background = np.asarray(background, dtype=np.float32)
    bank = np.asarray(bank, dtype=np.float32)
    index = build_index(bank)

    def distance(vectors: np.ndarray) -> np.ndarray:
        # One function for the model SHAP explains and for the patch distance reported beside
        # it: values must sum to that distance, whatever batches the explainer evaluates in.
        return exact_nearest_distances(index, bank, vectors)

    dims = feature.shape[1]
    evals = 2 * dims + 1 if max_evals is None else max(int(max_evals), 2 * dims + 1)
    masker = shap.maskers.Independent(background, max_samples=len(background))
    explainer = shap.PermutationExplainer(distance, masker, seed=int(seed))
    result = explainer(feature, max_evals=evals, silent=True)
    return DimensionAttribution(
        values=np.asarray(result.values[0], dtype=np.float64),
        base_value=float(np.asarray(result.base_values).reshape(-1)[0]),
        patch_distance=float(distance(feature)[0]),
    )
