"""The embedded synthetic dataset: determinism, layout, masks, and that categories look different."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.loading import load_defect_channels, load_image
from fedpatchcore.core.data.synthetic import (
    CATEGORY_DEFECTS,
    MANIFEST_FILE,
    SYNTHETIC_CATEGORIES,
    generate_synthetic_dataset,
    render_image,
)

TINY = {"image_size": (32, 32), "n_train": 2, "n_test_good": 1, "n_test_per_defect": 1}


def _hashes(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def test_deterministic_layout_and_summary(tmp_path):
    summary = generate_synthetic_dataset(tmp_path / "a", seed=3, **TINY)
    generate_synthetic_dataset(tmp_path / "b", seed=3, **TINY)
    generate_synthetic_dataset(tmp_path / "c", seed=4, **TINY)
    a, b, c = (_hashes(tmp_path / x) for x in "abc")
    assert a == b and a != c
    assert summary["generated"] and len(SYNTHETIC_CATEGORIES) >= 4
    assert summary["categories"]["parts_tray"]["test_defects"] == {
        d: 1 for d in CATEGORY_DEFECTS["parts_tray"]
    }
    assert all(2 <= len(CATEGORY_DEFECTS[c]) <= 3 for c in SYNTHETIC_CATEGORIES)
    assert "parts_tray/ground_truth/misplaced_part/0000/0001.png" in a  # two channels
    config = json.loads((tmp_path / "a" / "parts_tray" / "defects_config.json").read_text())
    missing = next(e for e in config if e["defect_name"] == "missing_part")
    assert missing["relative_saturation"] is False and missing["saturation_threshold"] > 1


def test_manifest_skips_rewrite_unless_changed(tmp_path):
    generate_synthetic_dataset(tmp_path, categories=["metal_plate"], **TINY)
    image = tmp_path / "metal_plate" / "train" / "good" / "0000.png"
    image.write_bytes(image.read_bytes())  # same content, new mtime baseline
    before = image.stat().st_mtime_ns
    again = generate_synthetic_dataset(tmp_path, categories=["metal_plate"], **TINY)
    assert not again["generated"] and image.stat().st_mtime_ns == before
    assert generate_synthetic_dataset(tmp_path, categories=["metal_plate"], overwrite=True, **TINY)[
        "generated"
    ]
    changed = generate_synthetic_dataset(tmp_path, categories=["metal_plate"], **{**TINY, "n_train": 1})
    assert changed["generated"] and not image.with_name("0001.png").exists()
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["complete"]
    with pytest.raises(ValueError, match="metal_plate"):
        generate_synthetic_dataset(tmp_path, categories=["marble"], **TINY)


def test_a_root_that_is_a_file_is_an_error_naming_dataset_root(tmp_path):
    root = tmp_path / "synthetic"
    root.write_text("not a folder")
    with pytest.raises(InputError, match=rf"^dataset.root: {root} is a file: the synthetic dataset is written into a folder"):
        generate_synthetic_dataset(root, **TINY)
    assert root.read_text() == "not a folder"  # untouched


def test_masks_mark_exactly_the_changed_pixels():
    for category in SYNTHETIC_CATEGORIES:
        for defect in CATEGORY_DEFECTS[category]:
            good, _ = render_image(category, None, np.random.default_rng(7), (48, 40))
            bad, channels = render_image(category, defect, np.random.default_rng(7), (48, 40))
            assert good.shape == (40, 48, 3)
            mask = np.logical_or.reduce(channels)
            changed = (good != bad).any(axis=2)
            assert mask.any() and not (changed & ~mask).any(), (category, defect)
            assert changed[mask].mean() > 0.3, (category, defect)
            assert len(channels) == (2 if defect.startswith("misplaced") else 1)


def test_categories_look_different_and_metal_is_brushed():
    def descriptor(image):  # colour balance and contrast, blind to the per-image lighting gain
        brightness = image.mean()
        return np.concatenate([image.mean(axis=(0, 1)) / brightness, [image.std() / brightness]])

    images = {
        c: [render_image(c, None, np.random.default_rng(i), (64, 64))[0].astype(float) for i in range(2)]
        for c in SYNTHETIC_CATEGORIES
    }
    within = max(np.abs(descriptor(a) - descriptor(b)).max() for a, b in images.values())
    names = list(SYNTHETIC_CATEGORIES)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            across = np.abs(descriptor(images[first][0]) - descriptor(images[second][0])).max()
            assert across > 3 * within, (first, second)
    metal = images["metal_plate"][0].mean(axis=2)[8:-8, 8:-8]
    assert np.abs(np.diff(metal, axis=1)).mean() < 0.7 * np.abs(np.diff(metal, axis=0)).mean()


def test_synthetic_indexed_with_its_drawn_size(tmp_path):
    generate_synthetic_dataset(tmp_path, categories=["parts_tray"], **TINY)
    samples, infos, skipped = index_dataset("synthetic", tmp_path, "all")
    assert skipped == [] and list(infos) == ["parts_tray"]
    info = infos["parts_tray"]
    assert info.image_size == (32, 32) and info.has_pixel_ground_truth
    misplaced = next(s for s in samples if s.defect_type == "misplaced_part")
    channels = load_defect_channels(misplaced, info)
    assert [d.defect_name for _, d in channels] == ["misplaced_part", "misplaced_part"]
    assert load_image(misplaced.image_path, (16, 16)).shape == (16, 16, 3)
    assert np.asarray(Image.open(samples[0].image_path)).shape == (32, 32, 3)


def _caps(image: np.ndarray, size: int) -> list[bool]:
    """Which assembly seats hold a cap (the dark cap at the seat's centre, within the carrier shift)."""
    from fedpatchcore.core.data.synthetic import ASSEMBLY_SEATS

    grey = image.mean(axis=2)
    out = []
    for rel_x, rel_y in ASSEMBLY_SEATS:
        x, y = int(rel_x * size), int(rel_y * size)
        out.append(bool((grey[y - 2 : y + 3, x - 2 : x + 3] < 100).mean() > 0.5))
    return out


def test_assembly_mandatory_caps_are_always_there_and_logical_defects_move_one():
    from fedpatchcore.core.data.synthetic import ASSEMBLY_MANDATORY

    size = 128
    goods = [render_image("assembly", None, np.random.default_rng(i), (size, size))[0] for i in range(6)]
    fills = [_caps(image, size) for image in goods]
    for filled in fills:
        assert all(filled[k] for k in ASSEMBLY_MANDATORY)
    optional = [k for k in range(len(fills[0])) if k not in ASSEMBLY_MANDATORY]
    assert len({tuple(f[k] for k in optional) for f in fills}) == len(fills)  # every assembly its own variant
    for i in range(4):
        good, _ = render_image("assembly", None, np.random.default_rng(100 + i), (size, size))
        missing, channels = render_image("assembly", "missing_part", np.random.default_rng(100 + i), (size, size))
        before, after = _caps(good, size), _caps(missing, size)
        assert sum(before) - sum(after) == 1 and len(channels) == 1
        assert not after[[k for k in ASSEMBLY_MANDATORY if before[k] != after[k]][0]]
        moved, channels = render_image("assembly", "misplaced_part", np.random.default_rng(100 + i), (size, size))
        now = _caps(moved, size)
        assert sum(now) == sum(before) and len(channels) == 2
        gone = [k for k in range(len(now)) if before[k] and not now[k]]
        new = [k for k in range(len(now)) if now[k] and not before[k]]
        assert len(gone) == len(new) == 1 and gone[0] in ASSEMBLY_MANDATORY and new[0] not in ASSEMBLY_MANDATORY
