"""Ingest: make sure the raw images are there, index them into one table, split off validation
images and set aside the test images label noise will train on (so no variant is scored on them)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from fedpatchcore.core.data.index import index_dataset, subsample_training
from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
from fedpatchcore.core.data.types import category_info_to_dict, frame_to_samples, samples_to_frame
from fedpatchcore.core.features.backbones import default_image_size
from fedpatchcore.core.federation.heterogeneity import reserve_label_noise
from fedpatchcore.core.tuning.split import split_validation, unused_training_keys

VALIDATION_SPLIT_COLUMNS = ["key", "category", "role"]

logger = logging.getLogger(__name__)


def prepare_raw_dataset(dataset: dict[str, Any], seed: int) -> dict[str, Any]:
    """Generate the embedded synthetic dataset if it is the chosen one; check real data is there."""
    root = Path(dataset["root"])
    if dataset["format"] == "synthetic":
        settings = dataset["synthetic"]
        summary = generate_synthetic_dataset(
            root,
            seed=seed,
            image_size=tuple(settings["image_size"]),
            n_train=settings["n_train"],
            n_test_good=settings["n_test_good"],
            n_test_per_defect=settings["n_test_per_defect"],
        )
        return {"format": "synthetic", "root": str(root), "generated": summary}
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset.root={root} does not exist. Point the `dataset.root` parameter at your "
            f"{dataset['format']} folder (conf/local/parameters.yml or --params dataset.root=...)."
        )
    return {"format": dataset["format"], "root": str(root)}


def index_raw_dataset(
    raw_dataset: dict[str, Any], dataset: dict[str, Any], seed: int = 0, backbone: dict[str, Any] | None = None
) -> tuple[pd.DataFrame, dict[str, Any], list[dict[str, str]]]:
    """One row per image, the per-category facts (resize, defect configs), and skipped files.

    ``dataset.train_fraction`` keeps only a seeded share of some categories' training images
    (every variant of a run then sees the same reduced dataset). Without ``dataset.image_sizes``
    images are read at the backbone's own input size when it has one (EfficientNet-Lite1/2,
    timm models), else at the dataset format's default size.
    """
    image_sizes = dataset.get("image_sizes") or None
    preferred = default_image_size(backbone["name"]) if backbone else None
    if image_sizes is None and preferred is not None:
        image_sizes = {"default": list(preferred)}
        logger.info("Images are read at %s's input size %dx%d (dataset.image_sizes is null)", backbone["name"], *preferred)
    samples, infos, skipped = index_dataset(
        raw_dataset["format"], raw_dataset["root"], dataset["categories"], image_sizes=image_sizes
    )
    samples, reduced = subsample_training(samples, dataset.get("train_fraction"), seed)
    for category, count in reduced.items():
        logger.info("dataset.train_fraction: %s keeps %d of %d training images", category, count["kept"], count["of"])
    frame = samples_to_frame(samples)
    counts = frame.groupby(["category", "split"]).size().unstack(fill_value=0)
    logger.info("Indexed %d images of %d categories:\n%s", len(frame), len(infos), counts.to_string())
    if skipped:
        logger.warning("Skipped %d unreadable files (listed in skipped_files.json)", len(skipped))
    return frame, {name: category_info_to_dict(info) for name, info in infos.items()}, skipped


def make_validation_split(
    dataset_index: pd.DataFrame, validation: dict[str, Any], seed: int, *, always: bool = False
) -> pd.DataFrame:
    """``key, category, role`` of every training image (role ``bank`` | ``validation``).

    Empty unless ``validation.enabled`` (or ``always``: the tune pipeline splits in any case).
    Only training images are looked at (core.validation.split_validation drops test rows unread).
    """
    if not (always or validation.get("enabled", False)):
        return pd.DataFrame(columns=VALIDATION_SPLIT_COLUMNS)
    split = split_validation(frame_to_samples(dataset_index), float(validation["fraction"]), int(seed))
    logger.info(
        "Validation split: %d of %d training images held out (validation.fraction=%s)",
        len(split.validation),
        len(split.validation) + len(split.train),
        validation["fraction"],
    )
    return split.to_frame()


def reserve_label_noise_images(
    dataset_index: pd.DataFrame, variants: dict[str, dict[str, Any]], seed: int
) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """Set aside the defective test images label noise will put into training sets, in any variant.

    Returns the pool (category -> keys) and the evaluation index: the dataset without them, so
    no variant is ever scored on an image some client trained on, and all variants of a run
    are scored on the same images.
    """
    samples = frame_to_samples(dataset_index)
    held_out = {
        name: unused_training_keys(
            samples, values.get("validation"), (values.get("dataset") or {}).get("train_shots", "all"), values["seed"]
        )
        for name, values in variants.items()
    }
    pool = reserve_label_noise(samples, variants, held_out, seed)
    reserved = {key for keys in pool.values() for key in keys}
    if reserved:
        logger.info("Left out of evaluation (used as label noise): %d test images", len(reserved))
    return pool, dataset_index[~dataset_index["key"].isin(reserved)].reset_index(drop=True)
