"""PatchCore's patch embedding: uint8 images -> locally aware patch features (torch).

:class:`PatchEmbedder` turns uint8 RGB images ``(B, H, W, 3)`` into locally aware patch
features ``(B, h, w, d)``: ImageNet normalisation, the frozen backbone's two stages,
3x3 neighbourhood averaging on each stage, the deeper stage bilinearly upsampled to the
shallower stage's grid, channels concatenated (``d = sum(backbone.channels)``).
On CUDA the whole embedding runs on the device, by default in float16 (autocast), and the
features come back in one pinned, non-blocking float16 copy per batch;
:meth:`PatchEmbedder.embed_batches` overlaps that copy with the next batch's network pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import nullcontext

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from fedpatchcore.core.common.runtime import resolve_device, set_torch_threads
from fedpatchcore.core.features.backbones import FeatureBackbone

__all__ = ["PRECISIONS", "PatchEmbedder", "image_hw", "local_stages", "resolve_precision", "seed_everything", "set_threads"]


def set_threads(n: int | None) -> None:
    """Set torch's and faiss' CPU threads to ``n`` (``None``/``0``: leave both as they are)."""
    set_torch_threads(n)
    if n is not None and int(n) > 0:
        faiss.omp_set_num_threads(int(n))


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch (and return a numpy Generator) so embedding and index building repeat exactly."""
    torch.manual_seed(int(seed))
    return np.random.default_rng(int(seed))


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
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


def local_stages(shallow: torch.Tensor, deep: torch.Tensor, neighbourhood: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchCore's locally aware features of both stages: ``neighbourhood`` x ``neighbourhood``
    averaging (borders average only the pixels inside), the deep stage bilinearly resized to the
    shallow stage's grid. The one rule of the torch embedder and of its ONNX export."""
    p = int(neighbourhood)
    if p > 1:
        shallow = F.avg_pool2d(shallow, p, stride=1, padding=p // 2, count_include_pad=False)
        deep = F.avg_pool2d(deep, p, stride=1, padding=p // 2, count_include_pad=False)
    h, w = shallow.shape[-2:]
    if deep.shape[-2:] != (h, w):
        deep = F.interpolate(deep, size=(h, w), mode="bilinear", align_corners=False)
    return shallow, deep


class PatchEmbedder:
    """Locally aware patch features from a frozen :class:`FeatureBackbone`.

    Args:
        backbone: from :func:`fedpatchcore.core.features.backbones.load_backbone`.
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
        height, width = image_hw(image_size)
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
        if self.precision != "float32":
            shallow, deep = shallow.to(self.compute_dtype), deep.to(self.compute_dtype)
        shallow, deep = local_stages(shallow, deep, self.neighbourhood)
        h, w = shallow.shape[-2:]
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
