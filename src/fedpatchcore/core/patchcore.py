"""PatchCore embedding, nearest-neighbour search and anomaly scoring (torch + faiss + scipy).

* :class:`PatchEmbedder` turns uint8 RGB images ``(B, H, W, 3)`` into locally aware patch
  features ``(B, h, w, d)``: ImageNet normalisation, the frozen backbone's two stages,
  3x3 neighbourhood averaging on each stage, the deeper stage bilinearly upsampled to the
  shallower stage's grid, channels concatenated (``d = sum(backbone.channels)``).
  On CUDA the whole embedding runs on the device, by default in float16 (autocast), and the
  features come back in one pinned, non-blocking float16 copy per batch;
  :meth:`PatchEmbedder.embed_batches` overlaps that copy with the next batch's network pass.
* :func:`build_index` / :func:`nearest_distances`: exact (``IndexFlatL2``) or IVF search,
  returning Euclidean (not squared) distances. With CUDA present, exact searches run on the
  GPU with torch (:func:`torch_nearest_neighbours`: blocked matmul + ``topk``, exact); the
  index itself stays a faiss index (it is what the catalog persists).
* :func:`score_images`: patch score = distance to the nearest bank vector; anomaly map =
  patch-score grid upsampled bilinearly to the image size, then Gaussian-smoothed; image
  score (``image_score``) = max of that RAW map (``"max"``, the default; never normalised
  per image), or the PatchCore paper's reweighted max patch score (``reweight``), or the
  mean of the ``topk`` highest patch scores (``"topk_mean"``).

This module does not import kedro.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import nullcontext

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from fedpatchcore.core.backbones import FeatureBackbone
from fedpatchcore.core.runtime import resolve_device, set_torch_threads

__all__ = [
    "PatchEmbedder",
    "build_index",
    "nearest_neighbours",
    "torch_nearest_neighbours",
    "nearest_distances",
    "score_images",
    "anomaly_maps",
    "reweight_scores",
    "topk_mean",
    "IMAGE_SCORES",
    "set_threads",
    "set_torch_threads",
    "seed_everything",
]


def set_threads(n: int | None) -> None:
    """Set torch's and faiss' CPU threads to ``n`` (``None``/``0``: leave both as they are)."""
    set_torch_threads(n)
    if n is not None and int(n) > 0:
        faiss.omp_set_num_threads(int(n))


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch (and return a numpy Generator) so embedding and index building repeat exactly."""
    torch.manual_seed(int(seed))
    return np.random.default_rng(int(seed))


def _image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``int`` -> square; ``(width, height)`` (PIL order) -> ``(height, width)``."""
    if isinstance(image_size, int | np.integer):
        return int(image_size), int(image_size)
    width, height = image_size
    return int(height), int(width)


#: ``precision`` names accepted by :class:`PatchEmbedder` and the torch dtypes they compute in.
PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"float16"`` on CUDA, ``"float32"`` elsewhere; other names are checked."""
    if precision == "auto":
        return "float16" if device.type == "cuda" else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision


class PatchEmbedder:
    """Locally aware patch features from a frozen :class:`FeatureBackbone`.

    Args:
        backbone: from :func:`fedpatchcore.core.backbones.load_backbone`.
        neighbourhood: side of the square local-averaging window (PatchCore's p=3); 1 = none.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; the backbone is moved there.
        precision: arithmetic of the network and the aggregation: ``"auto"`` (float16 on CUDA,
            float32 elsewhere), ``"float32"``, ``"float16"`` or ``"bfloat16"`` (autocast; the
            features agree with float32 within the half type's rounding). Features come back as
            float32 in float32 mode and as float16 otherwise (half the bytes to copy and store).
    """

    def __init__(
        self,
        backbone: FeatureBackbone,
        neighbourhood: int = 3,
        device: str = "cpu",
        precision: str = "auto",
    ) -> None:
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be a positive odd integer, got {neighbourhood}")
        self.device = torch.device(resolve_device(device))
        self.precision = resolve_precision(precision, self.device)
        self.compute_dtype = PRECISIONS[self.precision]
        self.output_dtype = torch.float32 if self.precision == "float32" else torch.float16
        self.backbone = backbone.to(self.device).eval()
        if self.device.type == "cuda":  # NHWC convolutions (tensor cores) on the GPU
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.neighbourhood = int(neighbourhood)
        mean = torch.tensor(backbone.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(backbone.std, dtype=torch.float32, device=self.device)
        # x_norm = (x/255 - mean)/std = x * scale - shift   (one fused multiply-add per pixel)
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
        self._shift = (mean / std).view(1, 3, 1, 1)
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def feature_dim(self) -> int:
        return int(sum(self.backbone.channels))

    def grid_size(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of :meth:`embed` for ``image_size`` (``int`` or ``(width, height)``).

        Both registered backbones halve sizes with ceil rounding (TF 'SAME' / torchvision
        padding), so the shallow stage of stride ``s`` has ``ceil(H/s) x ceil(W/s)`` patches.
        """
        height, width = _image_hw(image_size)
        stride = self.backbone.strides[0]
        return math.ceil(height / stride), math.ceil(width / stride)

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> normalised float ``(B, 3, H, W)`` (channels_last memory)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape (B, H, W, 3), got {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images))
        if self.device.type == "cuda":
            x = x.pin_memory()  # uint8 upload: a quarter of the float bytes, asynchronous
        x = x.to(self.device, non_blocking=True)
        # NHWC storage viewed as NCHW is exactly the channels_last layout: no copy here.
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        return torch.addcmul(-self._shift, x, self._scale)

    def _autocast(self):
        if self.precision == "float32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def _aggregate(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        """Neighbourhood averaging + upsample + concat -> ``(B, h, w, d)`` tensor (output dtype)."""
        p = self.neighbourhood
        if self.precision != "float32":
            shallow, deep = shallow.to(self.compute_dtype), deep.to(self.compute_dtype)
        if p > 1:
            shallow = F.avg_pool2d(shallow, p, stride=1, padding=p // 2, count_include_pad=False)
            deep = F.avg_pool2d(deep, p, stride=1, padding=p // 2, count_include_pad=False)
        h, w = shallow.shape[-2:]
        if deep.shape[-2:] != (h, w):
            deep = F.interpolate(deep, size=(h, w), mode="bilinear", align_corners=False)
        c1 = shallow.shape[1]
        out = torch.empty(
            (shallow.shape[0], h, w, c1 + deep.shape[1]), dtype=self.output_dtype, device=shallow.device
        )
        # permute(0, 2, 3, 1) of a channels_last tensor is a contiguous view: plain memcpy-like writes.
        out[..., :c1] = shallow.permute(0, 2, 3, 1)
        out[..., c1:] = deep.permute(0, 2, 3, 1)
        return out

    def embed_tensor(self, images: np.ndarray) -> torch.Tensor:
        """Like :meth:`embed` but returns the torch tensor on ``self.device`` (output dtype)."""
        with torch.inference_mode(), self._autocast():
            shallow, deep = self.backbone(self.to_tensor(images))
            return self._aggregate(shallow, deep)

    def _start_copy(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Queue one non-blocking device->host copy of ``feats`` into pinned memory."""
        ready = torch.cuda.Event()
        ready.record()  # the network's work on the current stream
        host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
        with torch.cuda.stream(self._copy_stream):
            self._copy_stream.wait_event(ready)
            host.copy_(feats, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        feats.record_stream(self._copy_stream)  # keep the device memory until the copy is done
        return host, done

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB ``(B, H, W, 3)`` -> patch features ``(B, h, w, feature_dim)``.

        float32 in float32 precision (the CPU default), float16 otherwise.
        """
        feats = self.embed_tensor(images)
        if feats.device.type == "cpu":
            return feats.numpy()
        if feats.device.type != "cuda":  # pragma: no cover - e.g. mps
            return feats.cpu().numpy()
        host, done = self._start_copy(feats)
        done.synchronize()
        return host.numpy()

    def embed_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """:meth:`embed` for a stream of batches; on CUDA each batch's copy to the host runs
        on a side stream while the network already works on the next batch.

        Every yielded array has its own (pinned) memory and stays valid after the next one.
        """
        if self.device.type != "cuda":
            for images in batches:
                yield self.embed(images)
            return
        pending = None
        for images in batches:
            copy = self._start_copy(self.embed_tensor(images))
            if pending is not None:
                pending[1].synchronize()
                yield pending[0].numpy()
            pending = copy
        if pending is not None:
            pending[1].synchronize()
            yield pending[0].numpy()


# ----------------------------------------------------------------------------------------
# nearest-neighbour search
# ----------------------------------------------------------------------------------------


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def build_index(
    bank: np.ndarray,
    approximate: bool = False,
    nlist: int | None = None,
    nprobe: int = 8,
    seed: int = 0,
) -> faiss.Index:
    """Faiss L2 index over a bank ``(M, d)``.

    ``approximate=False``: exact ``IndexFlatL2``. ``approximate=True``: ``IndexIVFFlat``
    with ``nlist`` k-means cells (default ``~4*sqrt(M)``, at most ``M // 39`` so every
    centroid has enough training points), k-means seeded by ``seed``, searching ``nprobe``
    cells per query.
    """
    bank = _as_f32(bank)
    if bank.ndim != 2 or bank.shape[0] == 0:
        raise ValueError(f"bank must be a non-empty (M, d) array, got shape {bank.shape}")
    m, d = bank.shape
    if not approximate:
        index = faiss.IndexFlatL2(d)
        index.add(bank)
        return index
    if nlist is None:
        nlist = max(1, min(int(round(4 * math.sqrt(m))), m // 39))
    nlist = int(min(nlist, m))
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    index.cp.seed = int(seed)
    index.train(bank)
    index.add(bank)
    index.nprobe = int(min(nprobe, nlist))
    return index


#: Entries of one query-by-bank distance tile of :func:`torch_nearest_neighbours` (64 Mi floats
#: = 256 MiB on a GPU; the CPU default is a sixteenth of that).
_KNN_TILE_CUDA = 1 << 26
_KNN_TILE_CPU = 1 << 22
#: Exact faiss indexes whose bank was copied to the GPU: id(index) -> (index, bank, squared norms).
_DEVICE_BANKS: dict[int, tuple[faiss.Index, torch.Tensor, torch.Tensor]] = {}
_DEVICE_BANKS_MAX = 4


class _ExactFloat32Matmul:
    """Plain float32 matrix products for the duration (no TF32 on Ampere+ GPUs): exact search."""

    def __enter__(self):
        self._tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        return self

    def __exit__(self, *exc) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self._tf32


def _device_bank(bank, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    bank_t = bank if isinstance(bank, torch.Tensor) else torch.from_numpy(_as_f32(bank))
    bank_t = bank_t.to(device=device, dtype=torch.float32).contiguous()
    return bank_t, (bank_t * bank_t).sum(dim=1)


def torch_nearest_neighbours(
    bank: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor,
    k: int = 1,
    device: str | torch.device = "cpu",
    block: int | None = None,
    *,
    bank_sq: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest bank rows of every query, with torch on ``device``.

    The squared distances are ``||q||² - 2 q·b + ||b||²`` in float32 (what faiss'
    ``IndexFlatL2`` computes for batched queries), tiled so that one query-block x bank-block
    tile has at most ``block`` entries, with ``topk`` per tile and an exact merge across bank
    blocks. Returns Euclidean distances ``(P, k)`` float32 and bank row ids ``(P, k)`` int64,
    nearest first (the same contract as :func:`nearest_neighbours`).
    """
    device = torch.device(device)
    if bank_sq is None:
        bank_t, bank_sq = _device_bank(bank, device)
    else:
        bank_t = bank
    m, d = bank_t.shape
    if m == 0:
        raise ValueError("the bank is empty")
    k = int(k)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] for a bank of {m} rows, got {k}")
    q_all = queries if isinstance(queries, torch.Tensor) else torch.from_numpy(_as_f32(queries).reshape(-1, d))
    n = q_all.shape[0]
    tile = int(block or (_KNN_TILE_CUDA if device.type == "cuda" else _KNN_TILE_CPU))
    bank_rows = max(k, min(m, tile))  # bank rows per tile (all of it when it fits)
    query_rows = max(1, tile // bank_rows)
    dist = torch.empty((n, k), dtype=torch.float32, device=device)
    ids = torch.empty((n, k), dtype=torch.int64, device=device)
    with torch.inference_mode(), _ExactFloat32Matmul():
        for qs in range(0, n, query_rows):
            q = q_all[qs : qs + query_rows].to(device=device, dtype=torch.float32, non_blocking=True)
            q_sq = (q * q).sum(dim=1, keepdim=True)
            best_d = best_i = None
            for bs in range(0, m, bank_rows):
                part = bank_t[bs : bs + bank_rows]
                scores = torch.addmm(bank_sq[bs : bs + bank_rows].unsqueeze(0), q, part.T, alpha=-2.0)
                scores += q_sq
                kk = min(k, part.shape[0])
                vals, idx = torch.topk(scores, kk, dim=1, largest=False, sorted=True)
                idx += bs
                if best_d is None:
                    best_d, best_i = vals, idx
                else:  # exact merge of two sorted candidate lists
                    both_d = torch.cat([best_d, vals], dim=1)
                    both_i = torch.cat([best_i, idx], dim=1)
                    best_d, order = torch.topk(both_d, k, dim=1, largest=False, sorted=True)
                    best_i = torch.gather(both_i, 1, order)
            dist[qs : qs + len(q)] = best_d.clamp_min_(0.0).sqrt_()
            ids[qs : qs + len(q)] = best_i
    return dist.cpu().numpy(), ids.cpu().numpy()


def _search_device(index: faiss.Index, device: str | None) -> torch.device | None:
    """The torch device an exact search of ``index`` should run on, or None for faiss."""
    name = resolve_device(device or "auto")
    if not name.startswith("cuda"):
        return None
    if not (isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_L2):
        return None  # IVF and other approximate indexes stay on faiss
    return torch.device(name)


def _cached_device_bank(index: faiss.Index, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = id(index)
    hit = _DEVICE_BANKS.get(key)
    if hit is not None and hit[0] is index and hit[1].shape[0] == index.ntotal and hit[1].device == device:
        return hit[1], hit[2]
    bank_t, bank_sq = _device_bank(index.reconstruct_n(0, index.ntotal), device)
    if len(_DEVICE_BANKS) >= _DEVICE_BANKS_MAX:
        _DEVICE_BANKS.pop(next(iter(_DEVICE_BANKS)))
    _DEVICE_BANKS[key] = (index, bank_t, bank_sq)
    return bank_t, bank_sq


def nearest_neighbours(
    index: faiss.Index,
    patches: np.ndarray,
    k: int = 1,
    batch_size: int = 65536,
    device: str | None = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances ``(P, k)`` float32 and bank row ids ``(P, k)`` int64, in batches.

    ``device``: ``"auto"`` searches an exact (``IndexFlatL2``) index on the GPU with
    :func:`torch_nearest_neighbours` when CUDA is available (same distances within float32
    rounding; the bank is copied to the GPU once per index), and with faiss otherwise;
    ``"cpu"`` always uses faiss.
    """
    patches = _as_f32(patches).reshape(-1, index.d)
    target = _search_device(index, device)
    if target is not None:
        bank_t, bank_sq = _cached_device_bank(index, target)
        return torch_nearest_neighbours(bank_t, patches, k=k, device=target, bank_sq=bank_sq)
    n = patches.shape[0]
    dist = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, max(1, int(batch_size))):
        stop = min(n, start + int(batch_size))
        d2, i = index.search(patches[start:stop], k)
        dist[start:stop] = d2
        ids[start:stop] = i
    np.maximum(dist, 0.0, out=dist)  # faiss' squared L2 can be slightly negative
    np.sqrt(dist, out=dist)
    return dist, ids


def nearest_distances(
    index: faiss.Index, patches: np.ndarray, k: int = 1, batch_size: int = 65536
) -> np.ndarray:
    """Euclidean distance of each patch ``(P, d)`` to its ``k`` nearest bank vectors: ``(P, k)``."""
    return nearest_neighbours(index, patches, k=k, batch_size=batch_size)[0]


# ----------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------


def anomaly_maps(
    patch_scores: np.ndarray, image_size: int | tuple[int, int], sigma: float = 4.0
) -> np.ndarray:
    """Patch-score grids ``(B, h, w)`` -> maps ``(B, H, W)`` float32: bilinear upsampling
    (align_corners=False) to the image size, then a Gaussian of ``sigma`` pixels per image.
    Values stay in patch-distance units: nothing is normalised."""
    height, width = _image_hw(image_size)
    grid = torch.from_numpy(_as_f32(patch_scores))[:, None]
    maps = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()
    if sigma and sigma > 0:
        maps = gaussian_filter(maps, sigma=(0.0, float(sigma), float(sigma)))
    return np.ascontiguousarray(maps, dtype=np.float32)


def reweight_scores(
    index: faiss.Index,
    bank: np.ndarray,
    max_patches: np.ndarray,
    max_scores: np.ndarray,
    nearest_ids: np.ndarray,
    num_neighbours: int = 9,
) -> np.ndarray:
    """PatchCore's image-score reweighting (Roth et al. 2022, eq. 7).

    For each image: ``m_test*`` is its highest-scoring patch, ``m*`` its nearest bank vector,
    ``N_b(m*)`` the ``b`` nearest bank vectors of ``m*`` (``m*`` itself first). Then
    ``s = (1 - softmax_j(||m_test* - n_j||)[m*]) * s*``, computed stably with logsumexp.
    """
    bank = _as_f32(bank)
    b = int(min(num_neighbours, bank.shape[0]))
    m_star = bank[nearest_ids]  # (B, d)
    _, support = nearest_neighbours(index, m_star, k=b)  # (B, b) ids of N_b(m*)
    # Ensure m* is the reference element (exact ties / IVF could order it elsewhere).
    support[:, 0] = nearest_ids
    diffs = bank[support] - max_patches[:, None, :]  # (B, b, d)
    dists = np.sqrt(np.maximum((diffs.astype(np.float64) ** 2).sum(-1), 0.0))  # (B, b)
    dists[:, 0] = max_scores  # ||m_test* - m*|| exactly as scored
    log_norm = np.logaddexp.reduce(dists, axis=1)
    weight = 1.0 - np.exp(dists[:, 0] - log_norm)
    return (weight * max_scores).astype(np.float32)


#: Image scores :func:`score_images` offers (parameter ``scoring.image_score``).
IMAGE_SCORES = ("max", "topk_mean")


def topk_mean(patch_scores: np.ndarray, k: int) -> np.ndarray:
    """Mean of the ``k`` highest values of each row of ``patch_scores`` ``(B, ...)`` -> ``(B,)`` float32.

    ``k`` larger than the number of values per row averages them all; ``k = 1`` is the max.
    """
    if int(k) < 1:
        raise ValueError(f"scoring.topk must be >= 1, got {k}")
    flat = np.asarray(patch_scores, dtype=np.float32).reshape(len(patch_scores), -1)
    k = min(int(k), flat.shape[1])
    top = np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k :]
    return top.astype(np.float64).mean(axis=1).astype(np.float32)


def score_images(
    index: faiss.Index,
    patch_features: np.ndarray,
    image_size: int | tuple[int, int],
    sigma: float = 4.0,
    reweight: bool = False,
    bank: np.ndarray | None = None,
    num_neighbours: int = 9,
    batch_size: int = 65536,
    image_score: str = "max",
    topk: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps and image scores for patch features ``(B, h, w, d)``.

    Args:
        index: faiss index over the memory bank (:func:`build_index`).
        image_size: ``(width, height)`` of the maps (the original image size), or an int.
        sigma: Gaussian smoothing of the upsampled map, in pixels (0 = none).
        reweight: use the paper's reweighted max patch score as image score (needs ``bank``).
        num_neighbours: ``b``, the bank neighbourhood size of the reweighting.
        image_score: ``"max"`` (max of the map, or the reweighted score with ``reweight``) or
            ``"topk_mean"``: mean of the ``topk`` highest patch scores (raw nearest-neighbour
            distances on the patch grid), which a single noisy patch moves less.
        topk: patches averaged by ``"topk_mean"``.

    Returns:
        ``maps`` ``(B, H, W)`` float32 in raw distance units and ``image_scores`` ``(B,)``:
        ``maps.max((1, 2))``, with ``reweight`` the reweighted max patch score, with
        ``"topk_mean"`` the top-k mean of the patch scores.
    """
    if image_score not in IMAGE_SCORES:
        raise ValueError(f"Unknown scoring.image_score {image_score!r}; choose one of {list(IMAGE_SCORES)}")
    if image_score != "max" and reweight:
        raise ValueError("scoring.reweight applies to the max image score only (scoring.image_score: max)")
    feats = np.asarray(patch_features)
    if feats.ndim != 4:
        raise ValueError(f"patch_features must be (B, h, w, d), got shape {feats.shape}")
    n_img, h, w, d = feats.shape
    flat = _as_f32(feats.reshape(-1, d))
    dist, ids = nearest_neighbours(index, flat, k=1, batch_size=batch_size)
    patch_scores = dist[:, 0].reshape(n_img, h, w)
    maps = anomaly_maps(patch_scores, image_size, sigma=sigma)
    if image_score == "topk_mean":
        return maps, topk_mean(patch_scores, topk)
    if not reweight:
        return maps, maps.reshape(n_img, -1).max(axis=1).astype(np.float32)
    if bank is None:
        raise ValueError("score_images(reweight=True) needs the memory bank array (bank=...)")
    per_image = patch_scores.reshape(n_img, -1)
    arg = per_image.argmax(axis=1)
    rows = np.arange(n_img) * h * w + arg
    scores = reweight_scores(
        index,
        bank,
        max_patches=flat[rows],
        max_scores=per_image[np.arange(n_img), arg].astype(np.float64),
        nearest_ids=ids[rows, 0],
        num_neighbours=num_neighbours,
    )
    return maps, scores
