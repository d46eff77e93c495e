"""Streaming extraction, scoring and image batching on a few tiny PNGs with the real backbone."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.data.types import TEST, TRAIN, CategoryInfo, Sample
from fedpatchcore.core.features.backbones import load_backbone
from fedpatchcore.core.features.batches import iter_image_batches
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.features.extraction import SCRATCH_MARKER, extract_patch_features, remove_stale_scratch
from fedpatchcore.core.scoring.category import SearchBatches, score_category
from fedpatchcore.core.scoring.patch_scores import PatchScorer

WIDTH, HEIGHT = 48, 40  # not square: a swapped (width, height) shows up in the shapes
INFO = CategoryInfo(name="widget", image_size=(WIDTH, HEIGHT), has_pixel_ground_truth=False)


@pytest.fixture(scope="module")
def embedder():
    torch.set_num_threads(1)
    return PatchEmbedder(load_backbone("efficientnet_lite0"), neighbourhood=3)


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = 128 + 60 * np.sin((xx + yy) / 4.0)
    image = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1) + rng.normal(0, 3, (HEIGHT, WIDTH, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _sample(tmp_path, split: str, defect: str, image_id: str, pixels: np.ndarray | None) -> Sample:
    folder = tmp_path / "widget" / split / defect
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{image_id}.png"
    if pixels is None:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"definitely not image data" * 20)  # corrupt
    else:
        Image.fromarray(pixels).save(path)
    return Sample("widget", split, defect, image_id, str(path))


@pytest.fixture
def images(tmp_path):
    """Three good training images, one corrupt one between them, and two test images."""
    train = [
        _sample(tmp_path, TRAIN, "good", "000", _texture(0)),
        _sample(tmp_path, TRAIN, "good", "001", None),
        _sample(tmp_path, TRAIN, "good", "002", _texture(1)),
        _sample(tmp_path, TRAIN, "good", "003", _texture(2)),
    ]
    defect = _texture(3)
    defect[12:28, 16:32] = (250, 250, 20)  # a bright yellow stain
    test = [
        _sample(tmp_path, TEST, "good", "000", _texture(4)),
        _sample(tmp_path, TEST, "stain", "000", defect),
    ]
    return train, test


def test_iter_image_batches_skips_and_reports_unreadable_files(images, caplog):
    train, _ = images
    skipped: list[dict[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="fedpatchcore.core.features.batches"):
        batches = list(iter_image_batches(train, INFO.image_size, 2, skipped, num_workers=2))
    # Input order is kept; the corrupt image's batch just holds one image fewer.
    assert [[s.image_id for s in b.samples] for b in batches] == [["000"], ["002", "003"]]
    assert [b.images.shape for b in batches] == [(1, HEIGHT, WIDTH, 3), (2, HEIGHT, WIDTH, 3)]
    assert all(b.images.dtype == np.uint8 for b in batches)
    assert [entry["path"] for entry in skipped] == [train[1].image_path]
    assert skipped[0]["reason"]
    assert train[1].image_path in caplog.text


def test_iter_image_batches_edge_cases(images):
    train, _ = images
    skipped: list[dict[str, str]] = []
    assert list(iter_image_batches([], INFO.image_size, 4, skipped)) == []
    only_corrupt = list(iter_image_batches([train[1]], INFO.image_size, 4, skipped))
    assert only_corrupt == [] and len(skipped) == 1  # no empty batch is yielded
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_image_batches(train, INFO.image_size, 0, []))
    whole = list(iter_image_batches(train, INFO.image_size, 10, [], num_workers=1))
    assert len(whole) == 1 and len(whole[0].samples) == 3


def test_extraction_streams_every_readable_image(embedder, images, tmp_path):
    train, _ = images
    features = extract_patch_features(
        train,
        {"widget": INFO},
        embedder,
        tmp_path / "features",
        batch_size=2,
        projection_dim=16,
        seed=0,
        num_workers=1,
    )
    assert features.n_images == {"widget": 3}
    assert [entry["path"] for entry in features.skipped] == [train[1].image_path]

    grid_h, grid_w = embedder.grid_size(INFO.image_size)
    assert (grid_h, grid_w) == (5, 6)
    feature_file = features.files["widget"]
    assert feature_file.path == tmp_path / "features" / "widget.npy"
    assert feature_file.shape == (3 * grid_h * grid_w, embedder.feature_dim)
    assert feature_file.projected.shape == (3 * grid_h * grid_w, 16)

    # The rows are the embedder's patch vectors, image after image (stored as float16).
    first = embedder.embed(np.array(Image.open(train[0].image_path).convert("RGB"))[None])
    np.testing.assert_allclose(
        feature_file.gather(np.arange(grid_h * grid_w)),
        first.reshape(-1, first.shape[-1]),
        rtol=2e-3,
        atol=2e-3,
    )


def test_extraction_of_a_category_without_readable_images_fails(embedder, images, tmp_path):
    train, _ = images
    with pytest.raises(ValueError, match="no readable training image for category widget"):
        extract_patch_features(
            [train[1]], {"widget": INFO}, embedder, tmp_path / "f", batch_size=2, projection_dim=None, seed=0
        )


class _Interrupting:
    """The real embedder, raising ``error`` on call number ``after + 1`` (Ctrl-C mid-extraction)."""

    def __init__(self, embedder, after: int, error: BaseException):
        self.embedder, self.after, self.error, self.calls = embedder, after, error, 0
        self.feature_dim = embedder.feature_dim

    def embed(self, images):
        self.calls += 1
        if self.calls > self.after:
            raise self.error
        return self.embedder.embed(images)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("CUDA out of memory")])
def test_interrupted_extraction_removes_its_scratch(embedder, images, tmp_path, error):
    # Case 5 of issue 9: an interrupted extraction left its partial feature files in the
    # scratch folder, never cleaned nor reused (gigabytes per run at AutoVI size).
    train, _ = images
    other = INFO.__class__(name="gadget", image_size=INFO.image_size, has_pixel_ground_truth=False)
    gadgets = [Sample("gadget", TRAIN, "good", s.image_id, s.image_path) for s in train]
    scratch = tmp_path / "scratch" / "client_a_x1y2"  # made fresh by extraction, as in the node
    interrupting = _Interrupting(embedder, after=3, error=error)  # gadget done, widget half-way
    with pytest.raises(type(error)):
        extract_patch_features(
            gadgets + train,
            {"widget": INFO, "gadget": other},
            interrupting,
            scratch,
            batch_size=1,
            projection_dim=8,
            seed=0,
            num_workers=1,
        )
    assert interrupting.calls == 4
    assert not scratch.exists()
    assert list((tmp_path / "scratch").iterdir()) == []


def test_failed_extraction_keeps_files_it_did_not_write(embedder, images, tmp_path):
    train, _ = images
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "notes.txt").write_text("someone else's")
    with pytest.raises(KeyboardInterrupt):
        extract_patch_features(
            train,
            {"widget": INFO},
            _Interrupting(embedder, after=1, error=KeyboardInterrupt()),
            folder,
            batch_size=1,
            projection_dim=None,
            seed=0,
            num_workers=1,
        )
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_remove_stale_scratch_deletes_only_extraction_folders(tmp_path):
    scratch = tmp_path / ".scratch"
    marked = scratch / "client_qc_abc"
    marked.mkdir(parents=True)
    (marked / SCRATCH_MARKER).touch()
    (marked / "metal.npy").write_bytes(b"partial")
    legacy = scratch / "client_1_def"  # left before the marker existed: only .npy files
    legacy.mkdir()
    (legacy / "metal.npy").write_bytes(b"partial")
    foreign = scratch / "client_notes"  # not only .npy files: not ours
    foreign.mkdir()
    (foreign / "readme.md").write_text("keep me")
    (scratch / "other.bin").write_bytes(b"keep me too")

    removed = remove_stale_scratch(scratch)
    assert removed == [legacy, marked]
    assert sorted(p.name for p in scratch.iterdir()) == ["client_notes", "other.bin"]
    assert remove_stale_scratch(tmp_path / "missing") == []


def test_training_images_score_near_zero_against_their_own_bank(embedder, images, tmp_path):
    train, test = images
    features = extract_patch_features(
        train, {"widget": INFO}, embedder, tmp_path / "features", batch_size=4, projection_dim=None, seed=0
    )
    feature_file = features.files["widget"]
    bank = feature_file.gather(np.arange(feature_file.n_rows))
    index = build_index(bank, seed=0)

    own = score_category(train, INFO, embedder, index, PatchScorer(sigma=0.0), search=SearchBatches(2, num_workers=1))
    assert [s.image_id for s in own.samples] == ["000", "002", "003"]
    assert [entry["path"] for entry in own.skipped] == [train[1].image_path]
    assert own.maps.shape == (3, HEIGHT, WIDTH) and own.maps.dtype == np.float32
    np.testing.assert_allclose(own.image_scores, own.maps.reshape(3, -1).max(axis=1))

    unseen = score_category(test, INFO, embedder, index, PatchScorer(sigma=4.0), search=SearchBatches(2, num_workers=1))
    assert [s.defect_type for s in unseen.samples] == ["good", "stain"]
    assert unseen.maps.shape == (2, HEIGHT, WIDTH)
    good_score, stain_score = unseen.image_scores
    # Own patches are in the bank: only float16 storage separates them from it.
    assert own.maps.min() >= 0.0
    assert own.maps.max() < min(0.1, 0.05 * good_score)
    assert stain_score > 1.5 * good_score
    # Raw maps: the stain image's map peaks higher than the good one's (nothing normalised).
    np.testing.assert_allclose(unseen.image_scores, unseen.maps.reshape(2, -1).max(axis=1))
    stain_map = unseen.maps[1]
    peak_y, peak_x = np.unravel_index(stain_map.argmax(), stain_map.shape)
    assert 8 <= peak_y <= 32 and 12 <= peak_x <= 36  # around the stain at rows 12..28, cols 16..32
