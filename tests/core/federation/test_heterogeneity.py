"""Per-client degradations and label noise: each changes what it should, only for its client."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.data.types import Sample
from fedpatchcore.core.federation.client import ClientSettings
from fedpatchcore.core.federation.heterogeneity import (
    ClientHeterogeneity,
    DomainShift,
    ImageDegrader,
    apply_label_noise,
    degrade_image,
    label_noise_counts,
    parse_heterogeneity,
    reserve_label_noise,
)
from fedpatchcore.core.federation.partition import partition_from_parameters
from fedpatchcore.core.federation.trust import measure_image_quality


def _image(seed: int = 0, size: int = 48) -> np.ndarray:
    """Sharp structure (a checkerboard) with mild texture, mid-grey, in RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    board = ((yy // 6 + xx // 6) % 2) * 80 + 90
    image = np.stack([board, board, board], axis=-1) + rng.normal(0, 2, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _degrade(**spec) -> np.ndarray:
    return degrade_image(_image(), parse_heterogeneity({"1": spec})["1"], np.random.default_rng(0))


def test_no_degradation_returns_the_image_untouched():
    image = _image()
    assert degrade_image(image, ClientHeterogeneity(), np.random.default_rng(0)) is image


def test_noise_raises_the_measured_noise_and_blur_lowers_sharpness():
    sharp0, noise0 = measure_image_quality(_image())
    _, noise1 = measure_image_quality(_degrade(noise_sigma=0.1))
    sharp_blur, _ = measure_image_quality(_degrade(motion_blur=9))
    sharp_defocus, _ = measure_image_quality(_degrade(domain_shift={"blur_sigma": 2.0}))
    assert noise1 > 3 * noise0  # sigma 25.5 grey levels on top of a texture of sigma 2
    assert sharp_blur < 0.5 * sharp0 and sharp_defocus < 0.5 * sharp0


def test_domain_shift_changes_colour_exposure_contrast_and_geometry():
    image = _image().astype(float)
    tinted = _degrade(domain_shift={"tint": [1.2, 1.0, 0.8]}).astype(float)
    assert tinted[..., 0].mean() > image[..., 0].mean() + 10 and tinted[..., 2].mean() < image[..., 2].mean() - 10
    assert _degrade(domain_shift={"brightness": 0.1}).mean() == pytest.approx(image.mean() + 25.5, abs=1.0)
    assert _degrade(domain_shift={"contrast": 0.5}).std() == pytest.approx(image.std() * 0.5, rel=0.05)
    warped = _degrade(domain_shift={"barrel_k": 0.3}).astype(float)
    centre = (slice(20, 28), slice(20, 28))
    assert np.abs(warped[centre] - image[centre]).mean() < 3  # the centre barely moves
    assert np.abs(warped[:8, :8] - image[:8, :8]).mean() > 10  # the corners do


def test_jpeg_reencoding_loses_detail():
    assert np.abs(_degrade(jpeg_quality=10).astype(float) - _image()).mean() > 1


def test_degrader_is_seeded_per_image_logs_every_image_and_only_acts_for_its_client(tmp_path):
    spec = parse_heterogeneity({"1": {"noise_sigma": 0.05}})
    sample = Sample("plate", "train", "good", "000", "x.png")
    other = Sample("plate", "train", "good", "001", "y.png")
    degrader = ImageDegrader("1", spec["1"], seed=0)
    first = degrader(sample, _image())
    np.testing.assert_array_equal(first, ImageDegrader("1", spec["1"], seed=0)(sample, _image()))
    assert not np.array_equal(first, degrader(other, _image()))  # another image, another draw
    assert [entry["image"] for entry in degrader.manifest] == [sample.key, other.key]
    assert degrader.manifest[0]["applied"] == {"noise_sigma": 0.05}

    settings = {
        "coreset": {"ratio": 0.1, "max_size": None, "projection_dim": None},
        "federation": {},
        "extraction": {"batch_size": 1, "num_workers": 0},
        "seed": 0,
        "heterogeneity": {"1": {"noise_sigma": 0.05}},
    }
    assert ClientSettings.from_run(settings, "1").heterogeneity.degrades_images
    assert not ClientSettings.from_run(settings, "2").heterogeneity.degrades_images


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"1": {"noise": 0.1}}, r"heterogeneity\.1: unknown keys \['noise'\]"),
        ({"1": {"noise_sigma": "high"}}, r"heterogeneity\.1\.noise_sigma must be a number"),
        ({"1": {"label_noise": 1.5}}, r"heterogeneity\.1\.label_noise must lie in \[0.0, 1.0\]"),
        ({"1": {"domain_shift": {"tint": [1, 1]}}}, r"tint must be three channel gains"),
        ({"1": {"domain_shift": {"hue": 3}}}, r"domain_shift: unknown keys \['hue'\]"),
        (["1"], "must map client ids"),
    ],
)
def test_bad_heterogeneity_names_the_parameter(block, message):
    with pytest.raises(ValueError, match=message):
        parse_heterogeneity(block)


def test_describe_lists_only_what_is_set():
    spec = ClientHeterogeneity(domain_shift=DomainShift(brightness=0.1), jpeg_quality=30)
    assert spec.describe() == {
        "domain_shift": {"tint": [1.0, 1.0, 1.0], "brightness": 0.1, "contrast": 1.0, "blur_sigma": 0.0, "barrel_k": 0.0},
        "jpeg_quality": 30,
    }


# --------------------------------------------------------------------------- label noise


def test_label_noise_counts_share_of_all_images_spread_by_category():
    assert label_noise_counts({"a": 10, "b": 10}, 0.15) == {"a": 2, "b": 1}  # round(3) = 2 + 1
    assert label_noise_counts({"a": 4, "b": 0}, 0.5) == {"a": 2}
    assert label_noise_counts({"a": 4}, 0.0) == {}


def label_noise_dataset() -> list[Sample]:
    """Two categories of 10 training, 4 good and 6 defective test images (tests of label noise use it)."""
    samples = []
    for category in ("plate", "fabric"):
        samples += [Sample(category, "train", "good", f"{i:03d}", f"/d/{category}/train/{i}.png") for i in range(10)]
        samples += [Sample(category, "test", "good", f"{i:03d}", f"/d/{category}/test/good/{i}.png") for i in range(4)]
        samples += [Sample(category, "test", "scratch", f"{i:03d}", f"/d/{category}/test/scratch/{i}.png") for i in range(6)]
    return samples


def _partition(samples, pool, federation, heterogeneity):
    """The partition with label noise applied: (client -> keys, swaps), as the partition node makes it."""
    assignment = partition_from_parameters(samples, federation, seed=0)
    return apply_label_noise(assignment, samples, parse_heterogeneity(heterogeneity), pool, seed=0)


def test_label_noise_swaps_defective_images_into_one_client_only():
    samples = label_noise_dataset()
    federation = {"partition": "iid", "num_clients": 2}
    heterogeneity = {"1": {"label_noise": 0.3}}
    variants = {
        "federated": {"seed": 0, "federation": federation, "heterogeneity": {}},
        "noisy": {"seed": 0, "federation": federation, "heterogeneity": heterogeneity},
    }
    pool = reserve_label_noise(samples, variants, {}, seed=0)
    reserved = {key for keys in pool.values() for key in keys}
    # 30% of client 1's 10 training images, spread over its two categories, all defective test images.
    assert sum(len(keys) for keys in pool.values()) == 3 and all("/test/scratch/" in key for key in reserved)

    clean, _ = _partition(samples, pool, federation, {})
    noisy, swaps = _partition(samples, pool, federation, heterogeneity)
    added = set(noisy["1"]) - set(clean["1"])
    assert len(added) == round(0.3 * len(clean["1"])) and added <= reserved
    assert len(noisy["1"]) == len(clean["1"])  # swapped, not added: its "good" folder holds defective parts
    assert noisy["2"] == clean["2"]  # client 2 is untouched
    assert {k for s in swaps["1"].values() for k in s["added"]} == added
    assert {k for s in swaps["1"].values() for k in s["removed"]} == set(clean["1"]) - set(noisy["1"])


def test_the_pool_serves_the_noisiest_variant_and_skips_held_out_images():
    samples = label_noise_dataset()
    federation = {"partition": "iid", "num_clients": 1}
    variants = {
        "light": {"seed": 0, "federation": federation, "heterogeneity": {"1": {"label_noise": 0.1}}},
        "heavy": {"seed": 0, "federation": federation, "heterogeneity": {"1": {"label_noise": 0.2}}},
    }
    pool = reserve_label_noise(samples, variants, {}, seed=0)
    assert {c: len(keys) for c, keys in pool.items()} == {"fabric": 2, "plate": 2}  # 20% of 10 per category
    # Held-out training images (a validation split) are not partitioned, so they take no label noise.
    held_out = {s.key for s in samples if s.split == "train" and s.category == "plate" and s.image_id < "005"}
    pool = reserve_label_noise(samples, variants, {"light": held_out, "heavy": held_out}, seed=0)
    assert {c: len(keys) for c, keys in pool.items()} == {"fabric": 2, "plate": 1}  # 20% of 5


def test_too_much_label_noise_is_a_clear_error():
    federation = {"partition": "iid", "num_clients": 1}
    variants = {"noisy": {"seed": 0, "federation": federation, "heterogeneity": {"1": {"label_noise": 0.9}}}}
    with pytest.raises(ValueError, match="lower heterogeneity"):
        reserve_label_noise(label_noise_dataset(), variants, {}, seed=0)


def test_label_noise_is_reproducible_from_the_seed():
    samples = label_noise_dataset()
    federation = {"partition": "iid", "num_clients": 2}
    heterogeneity = {"1": {"label_noise": 0.2}}
    variants = {"noisy": {"seed": 0, "federation": federation, "heterogeneity": heterogeneity}}
    pool = reserve_label_noise(samples, variants, {}, seed=0)
    assert pool == reserve_label_noise(samples, variants, {}, seed=0)
    assert _partition(samples, pool, federation, heterogeneity) == _partition(samples, pool, federation, heterogeneity)
