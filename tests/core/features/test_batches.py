"""Image batches: the torchvision PNG path gives exactly PIL's pixels; everything else is PIL's."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedpatchcore.core.data.types import TRAIN, Sample
from fedpatchcore.core.features import batches
from fedpatchcore.core.features.batches import iter_image_batches

SIZE = (36, 28)  # (width, height) the batches are read at


def _pixels(seed: int, size=SIZE, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _files(tmp_path) -> list[Sample]:
    """PNGs of every kind the loader meets (and a JPEG, a resize case and a corrupt file)."""
    folder = tmp_path / "widget" / TRAIN / "good"
    folder.mkdir(parents=True)
    images = {
        "rgb": Image.fromarray(_pixels(0)),
        "grey": Image.fromarray(_pixels(1, channels=1)),
        "rgba": Image.fromarray(_pixels(2, channels=4)),
        "palette": Image.fromarray(_pixels(3)).convert("P"),
        "grey16": Image.fromarray(_pixels(4, channels=1).astype(np.uint16) * 257),
        "resized": Image.fromarray(_pixels(5, size=(50, 40))),
        "jpeg": Image.fromarray(_pixels(6)),
    }
    samples = []
    for name, image in images.items():
        path = folder / f"{name}.{'jpg' if name == 'jpeg' else 'png'}"
        image.save(path)
        samples.append(Sample("widget", TRAIN, "good", name, str(path)))
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 40)
    samples.insert(3, Sample("widget", TRAIN, "good", "corrupt", str(corrupt)))
    return samples


@pytest.mark.parametrize("workers", [0, 2])
def test_auto_decoder_gives_pils_pixels(tmp_path, workers):
    samples = _files(tmp_path)
    got, skipped_auto = [], []
    for batch in iter_image_batches(samples, SIZE, 3, skipped_auto, num_workers=workers, decoder="auto"):
        got.extend(zip([s.image_id for s in batch.samples], batch.images, strict=True))
    want, skipped_pil = [], []
    for batch in iter_image_batches(samples, SIZE, 3, skipped_pil, num_workers=workers, decoder="pil"):
        want.extend(zip([s.image_id for s in batch.samples], batch.images, strict=True))
    assert [name for name, _ in got] == [name for name, _ in want] == [
        "rgb", "grey", "rgba", "palette", "grey16", "resized", "jpeg"
    ]  # fmt: skip
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a.shape == (SIZE[1], SIZE[0], 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    assert [s["path"] for s in skipped_auto] == [s["path"] for s in skipped_pil] == [samples[3].image_path]


def test_torchvision_is_used_only_where_it_is_exact(tmp_path):
    samples = {s.image_id: s.image_path for s in _files(tmp_path)}
    decoded = {name: batches._decode_png_exact(path, SIZE) for name, path in samples.items()}
    assert {name for name, pixels in decoded.items() if pixels is not None} == {"rgb", "grey"}
    np.testing.assert_array_equal(decoded["rgb"], _pixels(0))
    np.testing.assert_array_equal(decoded["grey"], np.repeat(_pixels(1, channels=1)[:, :, None], 3, axis=2))


def test_unknown_decoder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="decoder"):
        list(iter_image_batches(_files(tmp_path), SIZE, 2, [], decoder="opencv"))
