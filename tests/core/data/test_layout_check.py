"""Dataset layout check run before any node: problems name the file, and good layouts pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.layout_check import check_dataset_layout, mask_problem

W, H = 16, 12


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _mask(width: int = W, height: int = H) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[2:6, 3:9] = 255
    return mask


def make_mvtec(root: Path, category: str = "widget") -> Path:
    """A valid MVTec-layout category: 2 train, 1 good test, 1 crack test with its mask."""
    cat = root / category
    _png(cat / "train" / "good" / "000.png", _image(0))
    _png(cat / "train" / "good" / "001.png", _image(1))
    _png(cat / "test" / "good" / "000.png", _image(2))
    _png(cat / "test" / "crack" / "000.png", _image(3))
    _png(cat / "ground_truth" / "crack" / "000_mask.png", _mask())
    return root


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_valid_layout_has_no_problem(tmp_path):
    root = make_mvtec(tmp_path)
    assert check_dataset_layout("mvtec", root) == []
    assert check_dataset_layout("autovi", root, ["widget"]) == []


def test_autovi_channel_folders_are_checked(tmp_path):
    cat = make_mvtec(tmp_path) / "widget"
    (cat / "ground_truth" / "crack" / "000_mask.png").unlink()
    channel = _png(cat / "ground_truth" / "crack" / "000" / "0000.png", _mask())
    assert check_dataset_layout("autovi", tmp_path) == []
    _truncate(channel)
    [problem] = check_dataset_layout("autovi", tmp_path)
    assert problem.startswith(f"{channel}: ") and "truncated" in problem


def test_truncated_mask_is_found_although_its_header_reads(tmp_path):
    # Case 3a of issue 9: indexing reads only headers, so a truncated mask used to pass
    # indexing and stop the run only at the metrics node.
    root = make_mvtec(tmp_path)
    mask = root / "widget" / "ground_truth" / "crack" / "000_mask.png"
    _truncate(mask, keep=0.7)
    samples, _, skipped = index_dataset("mvtec", root)  # indexing alone does not notice
    assert skipped == [] and any(s.mask_paths == (str(mask),) for s in samples)
    [problem] = check_dataset_layout("mvtec", root)
    assert problem.startswith(f"{mask}: ground-truth mask is truncated or corrupt")
    assert str(root / "widget" / "test" / "crack" / "000.png") in problem


def test_unreadable_and_wrongly_sized_masks(tmp_path):
    root = make_mvtec(tmp_path)
    gt = root / "widget" / "ground_truth" / "crack"
    _png(root / "widget" / "test" / "crack" / "001.png", _image(4))
    _png(gt / "001_mask.png", _mask(W + 1, H))
    (gt / "000_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    problems = check_dataset_layout("mvtec", root)
    assert len(problems) == 2
    assert problems[0].startswith(f"{gt / '000_mask.png'}: ground-truth mask cannot be read")
    assert problems[1].startswith(f"{gt / '001_mask.png'}: ground-truth mask is 17x12 but its image is 16x12")


def test_bytes_after_the_png_end_are_not_a_truncation(tmp_path):
    path = _png(tmp_path / "mask.png", _mask())
    path.write_bytes(path.read_bytes() + b"trailing")
    assert mask_problem(path, (W, H)) is None


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        # Case 3c of issue 9: an empty train/good was a warning at indexing and a KeyError at scoring.
        ("empty_train", "widget/train/good: holds no training image"),
        ("no_train", "widget/train/good: missing"),
        # Case 3b: a dataset without test folder ended in "centralized.overlays: Did not find any versions".
        ("no_test", "widget/test: missing"),
        ("empty_test", "widget/test: holds no test image"),
    ],
)
def test_missing_or_empty_folders_name_the_folder(tmp_path, breakage, expected):
    cat = make_mvtec(tmp_path) / "widget"
    if breakage in ("empty_train", "no_train"):
        shutil.rmtree(cat / "train" / "good")
        if breakage == "empty_train":
            (cat / "train" / "good").mkdir()
            (cat / "train" / "good" / "notes.txt").write_text("not an image")
    else:
        shutil.rmtree(cat / "test")
        if breakage == "empty_test":
            (cat / "test" / "good").mkdir(parents=True)
    problems = check_dataset_layout("mvtec", tmp_path)
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path}/{expected}"), problems


def test_every_category_is_checked_and_all_problems_are_listed(tmp_path):
    make_mvtec(tmp_path, "alpha")
    make_mvtec(tmp_path, "beta")
    shutil.rmtree(tmp_path / "alpha" / "test")
    shutil.rmtree(tmp_path / "beta" / "train" / "good")
    (tmp_path / "beta" / "train" / "good").mkdir()
    problems = check_dataset_layout("mvtec", tmp_path)
    assert [p.split(":")[0] for p in problems] == [
        str(tmp_path / "alpha" / "test"),
        str(tmp_path / "beta" / "train" / "good"),
    ]
    assert check_dataset_layout("mvtec", tmp_path, ["alpha"]) == problems[:1]


def test_root_and_category_problems(tmp_path):
    assert check_dataset_layout("mvtec", tmp_path / "nowhere") == [
        f"{tmp_path / 'nowhere'}: dataset root does not exist or is not a folder"
    ]
    make_mvtec(tmp_path)
    [problem] = check_dataset_layout("mvtec", tmp_path, ["gizmo"])
    assert "gizmo" in problem and "widget" in problem  # names the available categories


def test_synthetic_is_not_checked_because_ingest_generates_it(tmp_path):
    assert check_dataset_layout("synthetic", tmp_path / "not_generated_yet") == []


def test_a_synthetic_root_that_is_a_file_is_a_problem(tmp_path):
    # It used to end in a raw FileExistsError from the generator's mkdir.
    (tmp_path / "a_file").write_text("x")
    assert check_dataset_layout("synthetic", tmp_path / "a_file") == [
        f"{tmp_path / 'a_file'} is a file: the synthetic dataset is written into a folder (a new one is created)"
    ]
    assert check_dataset_layout("synthetic", tmp_path / "a_file" / "below") == [
        f"{tmp_path / 'a_file' / 'below'} lies under {tmp_path / 'a_file'}, which is a file: "
        "the synthetic dataset is written into a folder (a new one is created)"
    ]


def test_an_unreadable_test_image_is_left_to_the_skip_accounting(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "widget" / "test" / "crack" / "000.png").write_bytes(b"not a png")
    assert check_dataset_layout("mvtec", root) == []
