"""The patch embedding as an ONNX graph, and the same embedding run by ONNX Runtime.

An inspection station runs ONNX Runtime (or OpenVINO) on a CPU, not this project's torch code.
:func:`export_onnx` writes what :class:`~fedpatchcore.core.features.embedding.PatchEmbedder`
computes after normalisation (the frozen backbone's two stages, PatchCore's neighbourhood
averaging, the deep stage resized to the shallow grid, channels concatenated) as one ONNX graph:

* input ``image``: float32 ``(batch, 3, H, W)``, RGB scaled to [0, 1] then normalised with the
  backbone's ``mean`` / ``std`` (stated in the inspector's manifest); ``H, W`` are fixed at
  export (the category's input size), the batch is free;
* output ``features``: float32 ``(batch, h, w, d)``, the patch features the bank holds.

The exporter is torch's TorchScript-based one (``dynamo=False``: no extra package, and the
EfficientNet-Lite 'SAME' padding, computed from the input size, becomes constants at the fixed
size); opset :data:`OPSET`. :class:`OnnxEmbedder` has :class:`PatchEmbedder`'s ``embed`` /
``feature_dim`` interface over an ONNX Runtime session, so scoring code takes either.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedpatchcore.core.features.embedding import PatchEmbedder, image_hw, local_stages

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "EmbeddingNetwork", "OnnxEmbedder", "export_onnx"]

#: ONNX opset of the exported graph (ONNX Runtime >= 1.12 and OpenVINO >= 2022.1 run it).
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "features"


class EmbeddingNetwork(nn.Module):
    """Normalised images ``(B, 3, H, W)`` -> patch features ``(B, h, w, d)`` (float32): the
    part of :class:`PatchEmbedder` that becomes the ONNX graph."""

    def __init__(self, embedder: PatchEmbedder) -> None:
        super().__init__()
        self.backbone = embedder.backbone
        self.neighbourhood = embedder.neighbourhood

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        shallow, deep = local_stages(*self.backbone(images), self.neighbourhood)
        return torch.cat([shallow, deep], dim=1).permute(0, 2, 3, 1)


def export_onnx(
    embedder: PatchEmbedder, image_size: int | tuple[int, int], path: str | Path | None = None, opset: int = OPSET
) -> bytes:
    """The ONNX graph of ``embedder`` at input ``image_size`` (``(width, height)``): its bytes,
    also written to ``path`` when given. The export runs on the CPU in float32."""
    height, width = image_hw(image_size)
    network = EmbeddingNetwork(embedder).to("cpu").float().eval()
    example = torch.zeros((1, 3, height, width), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns that padding computed from the input size becomes a constant: it is
        # meant to, the input size is fixed.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network,
            (example,),
            buffer,
            dynamo=False,
            opset_version=int(opset),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    embedder.backbone.to(embedder.device)  # export moved the shared backbone to the CPU
    graph = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(graph)
    return graph


class OnnxEmbedder:
    """:meth:`PatchEmbedder.embed` through ONNX Runtime: uint8 RGB ``(B, H, W, 3)`` at the
    graph's fixed size -> float32 patch features ``(B, h, w, d)``.

    Args:
        graph: the ONNX model (bytes or a file path) from :func:`export_onnx`.
        mean, std: the normalisation the graph expects (RGB, [0, 1] units).
        threads: ONNX Runtime's intra-op threads (``None``/``0``: its default, all cores).
    """

    def __init__(self, graph: bytes | str | Path, mean, std, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        source = graph if isinstance(graph, bytes) else str(graph)
        self.session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        std = np.asarray(std, dtype=np.float32)
        # x_norm = (x/255 - mean)/std = x * scale - shift, in float32 as PatchEmbedder computes it
        self._scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1).astype(np.float32)
        self._shift = (np.asarray(mean, dtype=np.float32) / std).reshape(1, 3, 1, 1).astype(np.float32)
        shape = self.session.get_inputs()[0].shape
        self.input_hw = (int(shape[2]), int(shape[3]))
        # The exporter leaves the output's dims symbolic: one blank image tells the feature size.
        self.feature_dim = int(self.embed(np.zeros((1, *self.input_hw, 3), dtype=np.uint8)).shape[-1])

    @classmethod
    def from_embedder(
        cls, embedder: PatchEmbedder, image_size: int | tuple[int, int], threads: int | None = None
    ) -> OnnxEmbedder:
        """``embedder`` exported at ``image_size`` and loaded into ONNX Runtime (nothing written)."""
        mean, std = embedder.backbone.mean, embedder.backbone.std
        return cls(export_onnx(embedder, image_size), mean, std, threads=threads)

    def embed(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape (B, H, W, 3), got {images.shape}")
        if tuple(images.shape[1:3]) != self.input_hw:
            raise ValueError(
                f"the ONNX embedder takes {self.input_hw[1]}x{self.input_hw[0]} images (fixed at export), "
                f"got {images.shape[2]}x{images.shape[1]}"
            )
        x = images.transpose(0, 3, 1, 2).astype(np.float32) * self._scale - self._shift
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x)})[0]
