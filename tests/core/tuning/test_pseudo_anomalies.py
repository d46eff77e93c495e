"""Pseudo-anomalies: seeded, visible, and their masks are exactly the changed pixels."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.tuning.pseudo_anomalies import (
    KNOWN_PSEUDO_ANOMALY_KINDS,
    PSEUDO_ANOMALY_KINDS,
    cut_paste,
    local_blur,
    local_brightness,
    make_pseudo_anomalies,
    make_pseudo_anomaly,
    move_part,
    perlin_blend,
    perlin_noise,
    remove_part,
    scratch,
)


def _texture(seed: int, size: int = 48) -> np.ndarray:
    """Stripes plus noise: every region has structure, so blurs and pastes change pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 70 * np.sin((xx + 2 * yy) / 3.0 + seed)
    img = np.stack([base, 255 - base, base * 0.5 + 40], axis=-1) + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", KNOWN_PSEUDO_ANOMALY_KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_is_exactly_what_changed(kind, seed):
    image, donor = _texture(seed), _texture(seed + 10)
    before = image.copy()
    result = make_pseudo_anomaly(image, kind, np.random.default_rng(seed), donor)
    assert result.kind == kind
    assert result.image.dtype == np.uint8 and result.image.shape == image.shape
    assert result.mask.dtype == bool and result.mask.shape == image.shape[:2]
    changed = (result.image != image).any(axis=-1)
    np.testing.assert_array_equal(result.mask, changed)
    assert result.mask.sum() >= 12  # visible
    assert result.mask.mean() < 0.5  # local, not the whole image
    np.testing.assert_array_equal(image, before)  # the input is never modified


@pytest.mark.parametrize("kind", KNOWN_PSEUDO_ANOMALY_KINDS)
def test_seeded(kind):
    image, donor = _texture(3), _texture(4)
    a = make_pseudo_anomaly(image, kind, np.random.default_rng(7), donor)
    b = make_pseudo_anomaly(image, kind, np.random.default_rng(7), donor)
    c = make_pseudo_anomaly(image, kind, np.random.default_rng(8), donor)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.mask, c.mask)


def test_generators_change_what_they_claim():
    image = _texture(0)
    rng = np.random.default_rng(0)
    bright = local_brightness(image, rng)
    diff = bright.image.astype(int) - image.astype(int)
    assert np.abs(diff[bright.mask]).max() >= 20
    blur = local_blur(image, rng)
    # blurring lowers local contrast inside the region
    assert blur.image[blur.mask].std() < image[blur.mask].std()
    line = scratch(image, rng)
    assert 0 < line.mask.mean() < 0.15  # thin
    pasted = cut_paste(image, rng, donor=_texture(5))
    ys, xs = np.nonzero(pasted.mask)
    assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) <= 0.25 * 48 * 48 * 1.01  # one rectangle
    blend = perlin_blend(image, rng)  # noise texture
    assert blend.mask.any()


def test_flat_image_still_gets_a_visible_anomaly():
    flat = np.full((32, 32, 3), 100, np.uint8)
    for kind in ("local_brightness", "scratch", "perlin_blend"):
        result = make_pseudo_anomaly(flat, kind, np.random.default_rng(0))
        assert result.mask.sum() >= 8
        np.testing.assert_array_equal(result.mask, (result.image != flat).any(-1))


def test_perlin_noise_is_smooth_and_seeded():
    a = perlin_noise((32, 40), np.random.default_rng(0), (4, 5))
    b = perlin_noise((32, 40), np.random.default_rng(0), (4, 5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (32, 40) and np.abs(a).max() <= 1.5 and a.std() > 0.05
    assert np.abs(np.diff(a, axis=1)).max() < 0.5  # continuous


def test_make_pseudo_anomalies_uses_every_kind_and_sources():
    images = np.stack([_texture(i, 32) for i in range(3)])
    anomalies, sources = make_pseudo_anomalies(images, seed=0, per_image=2)
    assert sources == [0, 0, 1, 1, 2, 2]
    assert [a.kind for a in anomalies] == [PSEUDO_ANOMALY_KINDS[i % 5] for i in range(6)]
    for anomaly, source in zip(anomalies, sources, strict=True):
        np.testing.assert_array_equal(anomaly.mask, (anomaly.image != images[source]).any(-1))
    again, _ = make_pseudo_anomalies(images, seed=0, per_image=2)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(anomalies, again, strict=True))
    with pytest.raises(ValueError, match="Unknown pseudo-anomaly kind"):
        make_pseudo_anomalies(images, seed=0, kinds=["lasers"])
    with pytest.raises(ValueError, match="uint8"):
        make_pseudo_anomaly(images[0].astype(float), "scratch", np.random.default_rng(0))


def _carrier_with_seats() -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A plain noisy carrier with six identical seats (light rings), parts (dark discs) in three."""
    rng = np.random.default_rng(5)
    image = np.clip(rng.normal(150, 3, (64, 96, 3)), 0, 255)
    yy, xx = np.mgrid[0:64, 0:96]
    seats = [(16, 16), (16, 48), (16, 80), (48, 16), (48, 48), (48, 80)]
    for k, (cy, cx) in enumerate(seats):
        distance = np.hypot(yy - cy, xx - cx)
        image[(distance <= 5) & (distance > 4)] = 200
        if k in (0, 2, 4):
            image[distance <= 4] = 30
    return image.astype(np.uint8), seats


def test_remove_part_takes_out_a_part_and_leaves_an_empty_seat():
    image, seats = _carrier_with_seats()
    result = remove_part(image, np.random.default_rng(1))
    parts_before = sum(image[cy, cx, 0] < 80 for cy, cx in seats)
    parts_after = sum(result.image[cy, cx, 0] < 80 for cy, cx in seats)
    assert (parts_before, parts_after) == (3, 2)
    # the gap is filled with what lies around an empty seat, not with a flat colour
    centre = next((cy, cx) for cy, cx in seats if image[cy, cx, 0] < 80 and result.image[cy, cx, 0] > 80)
    assert result.mask[centre] and abs(int(result.image[centre][0]) - 150) < 20
    assert result.kind == "remove_part"


def test_move_part_puts_the_part_into_another_seat():
    image, seats = _carrier_with_seats()
    result = move_part(image, np.random.default_rng(2))
    before = {seat for seat in seats if image[seat][0] < 80}
    after = {seat for seat in seats if result.image[seat][0] < 80}
    assert len(after) == 3 and len(after - before) == 1 and len(before - after) == 1
    assert all(result.mask[seat] for seat in after ^ before)


def test_tune_keeps_the_structural_kinds_by_default():
    assert set(PSEUDO_ANOMALY_KINDS) < set(KNOWN_PSEUDO_ANOMALY_KINDS)
    assert {"remove_part", "move_part"} == set(KNOWN_PSEUDO_ANOMALY_KINDS) - set(PSEUDO_ANOMALY_KINDS)


def test_part_generators_prefer_parts_that_every_good_image_has():
    """Seat 0's part is in every good image, seat 2's in one of two: a removed part is seat 0's."""
    from fedpatchcore.core.tuning.pseudo_anomalies import part_variability

    image, seats = _carrier_with_seats()  # parts in seats 0, 2 and 4
    other = image.copy()
    for cy, cx in (seats[2], seats[4]):  # the other good image has no part in seats 2 and 4
        other[cy - 4 : cy + 5, cx - 4 : cx + 5] = image[seats[1][0] - 4 : seats[1][0] + 5, seats[1][1] - 4 : seats[1][1] + 5]
    variability = part_variability([image, other])
    assert variability[seats[0]] == 0 and variability[seats[2]] > 20
    assert part_variability([image]) is None
    for seed in range(4):
        result = remove_part(image, np.random.default_rng(seed), variability=variability)
        assert result.image[seats[0]][0] > 80  # seat 0's part is the one taken out
        assert result.image[seats[2]][0] < 80 and result.image[seats[4]][0] < 80
