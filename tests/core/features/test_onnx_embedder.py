"""The patch embedding exported to ONNX and run by ONNX Runtime: the same features as torch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from fedpatchcore.core.features.backbones import load_backbone  # noqa: E402
from fedpatchcore.core.features.embedding import PatchEmbedder  # noqa: E402
from fedpatchcore.core.features.onnx_embedder import OPSET, OnnxEmbedder, export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def embedder() -> PatchEmbedder:
    return PatchEmbedder(load_backbone("efficientnet_lite0", device="cpu"), neighbourhood=3, device="cpu")


def test_onnx_features_equal_the_torch_features(embedder, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 48, 64, 3), dtype=np.uint8)  # H=48, W=64
    graph = export_onnx(embedder, (64, 48), tmp_path / "embedder.onnx")
    assert (tmp_path / "embedder.onnx").read_bytes() == graph
    import onnx

    model = onnx.load_from_string(graph)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    onnx_embedder = OnnxEmbedder(graph, embedder.backbone.mean, embedder.backbone.std, threads=1)
    expected = embedder.embed(images)
    got = onnx_embedder.embed(images)
    assert got.shape == expected.shape == (3, 6, 8, 152)  # ceil(48/8) x ceil(64/8) patches, 40 + 112 channels
    assert onnx_embedder.feature_dim == embedder.feature_dim
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    # The batch is free, the input size is not.
    np.testing.assert_allclose(onnx_embedder.embed(images[:1]), expected[:1], rtol=1e-4, atol=1e-3)


def test_the_onnx_embedder_names_its_fixed_input_size(embedder):
    onnx_embedder = OnnxEmbedder.from_embedder(embedder, (32, 32))
    with pytest.raises(ValueError, match="takes 32x32 images"):
        onnx_embedder.embed(np.zeros((1, 64, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        onnx_embedder.embed(np.zeros((32, 32, 3), dtype=np.uint8))
