"""PatchCore embedding, search and scoring on tiny synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpatchcore.core.banks.knn import build_index, nearest_distances, nearest_neighbours
from fedpatchcore.core.features.backbones import FeatureBackbone, load_backbone
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.scoring.patch_scores import reweight_scores, score_images

SIZE = 64


@pytest.fixture(scope="module")
def embedder():
    torch.set_num_threads(1)
    return PatchEmbedder(load_backbone("efficientnet_lite0"), neighbourhood=3)


def _normal_image(seed: int = 0) -> np.ndarray:
    """A smooth periodic texture: diagonal stripes plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = 128 + 60 * np.sin((xx + yy) / 4.0)
    img = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1) + rng.normal(0, 3, (SIZE, SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _with_square(img: np.ndarray, y: int, x: int, side: int, colour) -> np.ndarray:
    out = img.copy()
    out[y : y + side, x : x + side] = colour
    return out


def test_embed_shapes_dims_and_determinism(embedder):
    assert embedder.feature_dim == 152
    images = np.stack([_normal_image(0), _normal_image(1)])
    feats = embedder.embed(images)
    assert feats.dtype == np.float32 and feats.shape == (2, 8, 8, 152)
    assert feats.flags.c_contiguous
    assert embedder.grid_size(SIZE) == (8, 8)
    np.testing.assert_array_equal(feats, embedder.embed(images))
    odd = embedder.embed(np.zeros((1, 65, 97, 3), np.uint8))  # (width, height) = (97, 65)
    assert odd.shape[1:3] == embedder.grid_size((97, 65)) == (9, 13)


def test_embed_matches_reference_ops(embedder):
    images = np.stack([_normal_image(2)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(embedder.backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(embedder.backbone.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        s, d = embedder.backbone(((x - mean) / std).contiguous())
        s = torch.nn.functional.avg_pool2d(s, 3, 1, 1, count_include_pad=False)
        d = torch.nn.functional.avg_pool2d(d, 3, 1, 1, count_include_pad=False)
        d = torch.nn.functional.interpolate(d, size=s.shape[-2:], mode="bilinear", align_corners=False)
        ref = torch.cat([s, d], 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(embedder.embed(images), ref, rtol=1e-4, atol=1e-4)


def test_scores_find_pasted_square_and_are_not_normalised(embedder):
    normal = _normal_image(0)
    bank = embedder.embed(normal[None]).reshape(-1, embedder.feature_dim)
    index = build_index(bank)

    maps, scores = score_images(index, embedder.embed(normal[None]), (SIZE, SIZE), sigma=4.0)
    assert maps.shape == (1, SIZE, SIZE) and maps.dtype == np.float32
    assert float(maps.max()) < 1e-2  # its own patches: ~zero distance

    y, x, side = 32, 16, 16
    small = _with_square(normal, y, x, side, (255, 0, 0))
    big = _with_square(normal, 8, 36, 24, (0, 255, 0))
    feats = embedder.embed(np.stack([small, big]))
    maps, scores = score_images(index, feats, (SIZE, SIZE), sigma=4.0)
    np.testing.assert_allclose(scores, maps.reshape(2, -1).max(1))
    assert abs(scores[0] - scores[1]) > 1e-3 * max(scores)  # raw maxima differ per image
    assert scores.min() > 100 * 1e-2
    peak = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert y - 8 <= peak[0] < y + side + 8 and x - 8 <= peak[1] < x + side + 8
    inside = maps[0, y : y + side, x : x + side].mean()
    far = maps[0, 0:8, 48:64].mean()
    assert inside > 3 * far


def test_score_image_size_is_width_height_and_sigma_zero(embedder):
    bank = np.random.default_rng(0).normal(size=(50, 152)).astype(np.float32)
    feats = np.random.default_rng(1).normal(size=(1, 4, 6, 152)).astype(np.float32)
    maps, scores = score_images(build_index(bank), feats, (48, 32), sigma=0)
    assert maps.shape == (1, 32, 48)
    # bilinear (align_corners=False) upsampling stays within the raw patch-score range
    raw = nearest_distances(build_index(bank), feats.reshape(-1, 152))[:, 0]
    assert scores[0] == pytest.approx(maps.max())
    assert raw.min() - 1e-4 <= maps.min() and maps.max() <= raw.max() + 1e-4
    assert scores[0] > 0.8 * raw.max()


def test_nearest_distances_are_euclidean_and_batched():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(101, 8)).astype(np.float32)
    dist = nearest_distances(build_index(bank), queries, k=3, batch_size=16)
    brute = np.sort(np.linalg.norm(queries[:, None] - bank[None], axis=-1), axis=1)[:, :3]
    assert dist.shape == (101, 3) and dist.dtype == np.float32
    np.testing.assert_allclose(dist, brute, rtol=1e-4, atol=1e-4)


def test_ivf_recall_against_exact():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(4000, 16)).astype(np.float32)
    queries = rng.normal(size=(200, 16)).astype(np.float32)
    _, exact = nearest_neighbours(build_index(bank), queries, k=1)
    ivf = build_index(bank, approximate=True, nprobe=16, seed=0)
    _, approx = nearest_neighbours(ivf, queries, k=1)
    recall = float((exact[:, 0] == approx[:, 0]).mean())
    assert recall >= 0.9, recall
    _, again = nearest_neighbours(build_index(bank, approximate=True, nprobe=16, seed=0), queries, k=1)
    np.testing.assert_array_equal(approx, again)  # seeded: reproducible


def test_reweighting_follows_the_paper():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(200, 4)).astype(np.float32)
    index = build_index(bank)
    feats = rng.normal(size=(2, 3, 3, 4)).astype(np.float32) * 2.0
    maps, plain = score_images(index, feats, (12, 12), sigma=1.0)
    _, weighted = score_images(index, feats, (12, 12), sigma=1.0, reweight=True, bank=bank, num_neighbours=5)
    assert weighted.shape == (2,) and np.all(weighted > 0)

    flat = feats.reshape(2, -1, 4)
    for i in range(2):
        d = np.linalg.norm(flat[i][:, None] - bank[None], axis=-1)
        patch = int(d.min(1).argmax())
        s_star = d[patch].min()
        m_star = int(d[patch].argmin())
        support = np.argsort(np.linalg.norm(bank - bank[m_star], axis=1))[:5]
        dist_support = np.linalg.norm(bank[support] - flat[i][patch], axis=1)
        w = 1 - np.exp(dist_support[0]) / np.exp(dist_support).sum()
        assert weighted[i] == pytest.approx(w * s_star, rel=1e-4)
        assert weighted[i] < s_star

    with pytest.raises(ValueError, match="bank"):
        score_images(index, feats, (12, 12), reweight=True)
    # stable for huge distances (no overflow to nan)
    big = reweight_scores(index, bank, bank[:1] + 1e4, np.array([1e4]), np.array([0]), num_neighbours=5)
    assert np.isfinite(big).all()


# ------------------------------------------------------------------ precision / device
class _TinyBackbone(FeatureBackbone):
    """Two small conv stages (strides 8 and 16) with BatchNorm: fast, deterministic."""

    name = "tiny"
    channels = (6, 10)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stage_shallow = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, stride=8, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU()
        )
        self.stage_deep = torch.nn.Sequential(
            torch.nn.Conv2d(6, 10, 3, stride=2, padding=1), torch.nn.BatchNorm2d(10), torch.nn.ReLU()
        )
        self.freeze()

    def forward(self, images):
        shallow = self.stage_shallow(images)
        return shallow, self.stage_deep(shallow)


def _tiny_images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.stack([_normal_image(seed + i) for i in range(n)])


def test_precision_names_and_cpu_default_is_float32():
    embedder = PatchEmbedder(_TinyBackbone(), device="cpu")
    assert embedder.precision == "float32"
    feats = embedder.embed(_tiny_images())
    assert feats.dtype == np.float32 and feats.shape == (3, 8, 8, 16)
    with pytest.raises(ValueError, match="precision"):
        PatchEmbedder(_TinyBackbone(), precision="int8")


@pytest.mark.parametrize(("precision", "tolerance"), [("float16", 5e-3), ("bfloat16", 4e-2)])
def test_half_precision_agrees_with_float32(precision, tolerance):
    images = _tiny_images()
    reference = PatchEmbedder(_TinyBackbone(), device="cpu").embed(images)
    half = PatchEmbedder(_TinyBackbone(), device="cpu", precision=precision)
    feats = half.embed(images)
    assert feats.dtype == np.float16 and feats.shape == reference.shape
    scale = np.abs(reference).max()
    assert np.abs(feats.astype(np.float32) - reference).max() <= tolerance * scale


def test_embed_batches_yields_what_embed_returns():
    embedder = PatchEmbedder(_TinyBackbone(), device="cpu")
    batches = [_tiny_images(2, seed) for seed in (0, 5, 9)]
    streamed = list(embedder.embed_batches(iter(batches)))
    assert len(streamed) == 3
    for images, feats in zip(batches, streamed, strict=True):
        np.testing.assert_array_equal(feats, embedder.embed(images))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_cuda_embedding_agrees_with_cpu(precision):  # pragma: no cover - GPU machines only
    images = _tiny_images(4)
    reference = PatchEmbedder(_TinyBackbone(), device="cpu").embed(images)
    gpu = PatchEmbedder(_TinyBackbone(), device="cuda", precision=precision)
    tolerance = 1e-4 if precision == "float32" else 5e-3
    for feats in [gpu.embed(images), *gpu.embed_batches([images, images])]:
        assert np.abs(feats.astype(np.float32) - reference).max() <= tolerance * np.abs(reference).max()


def test_soft_weights_scale_the_distance_to_the_nearest_row_by_its_weight():
    bank = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    weights = np.array([1.0, 3.0], dtype=np.float32)
    # 2x2 patches of one image: distances 1 and 2 to row 0, 1 and 0.5 to row 1 (weight 3)
    patches = np.array([[[[1, 0], [0, 2]], [[9, 0], [10, 0.5]]]], dtype=np.float32)
    index = build_index(bank)
    _, plain = score_images(index, patches, (2, 2), sigma=0)
    maps, soft = score_images(index, patches, (2, 2), sigma=0, row_weights=weights)
    np.testing.assert_allclose(maps[0], [[1, 2], [3, 1.5]], rtol=1e-6)  # 2x2 image: the map is the grid
    assert plain[0] == pytest.approx(2.0) and soft[0] == pytest.approx(3.0)
    # the nearest row is chosen by plain distance: a weight never sends a patch to another row
    _, moved = score_images(index, np.array([[[[6, 0]]]], dtype=np.float32), (1, 1), sigma=0, row_weights=weights)
    assert moved[0] == pytest.approx(4 * 3.0)
