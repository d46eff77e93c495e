"""Ingest: make sure the raw images are there and index them into one table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from fedpatchcore.core.data.index import index_dataset, subsample_training
from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
from fedpatchcore.core.data.types import category_info_to_dict, samples_to_frame

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
    raw_dataset: dict[str, Any], dataset: dict[str, Any], seed: int = 0
) -> tuple[pd.DataFrame, dict[str, Any], list[dict[str, str]]]:
    """One row per image, the per-category facts (resize, defect configs), and skipped files.

    ``dataset.train_fraction`` keeps only a seeded share of some categories' training images
    (every variant of a run then sees the same reduced dataset).
    """
    image_sizes = dataset.get("image_sizes") or None
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
