"""The records every reader produces and every later stage consumes.

A dataset is indexed once into a flat list of :class:`Sample` (one per image) plus one
:class:`CategoryInfo` per product category. Nothing downstream looks at folder layouts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import pandas as pd

GOOD = "good"
TRAIN = "train"
TEST = "test"

# mask_paths are stored in one CSV cell, joined by this separator (never part of a path we write).
MASK_PATH_SEPARATOR = "|"


@dataclass(frozen=True)
class Sample:
    """One image of one category, with where its ground truth lives."""

    category: str
    split: str  # "train" | "test"
    defect_type: str  # "good" or the defect folder name
    image_id: str  # file stem, e.g. "0003"
    image_path: str
    # One PNG per defect channel (AutoVI: ground_truth/<defect>/<id>/<nnnn>.png; MVTec: one
    # <id>_mask.png). Empty for good images and for datasets without pixel ground truth.
    mask_paths: tuple[str, ...] = ()

    @property
    def label(self) -> int:
        """1 for an anomalous image, 0 for a defect-free one."""
        return 0 if self.defect_type == GOOD else 1

    @property
    def key(self) -> str:
        """Unique, stable name of the image inside the dataset."""
        return f"{self.category}/{self.split}/{self.defect_type}/{self.image_id}"


@dataclass(frozen=True)
class DefectConfig:
    """One entry of AutoVI's defects_config.json (MVTec LOCO semantics)."""

    defect_name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool


@dataclass(frozen=True)
class CategoryInfo:
    """What a later stage must know about a category beyond its images."""

    name: str
    image_size: tuple[int, int]  # (width, height) every image and mask is resized to
    has_pixel_ground_truth: bool
    defects: tuple[DefectConfig, ...] = field(default_factory=tuple)

    def defect_by_pixel_value(self, pixel_value: int) -> DefectConfig | None:
        for defect in self.defects:
            if defect.pixel_value == pixel_value:
                return defect
        return None


SAMPLE_COLUMNS = ["key", "category", "split", "defect_type", "label", "image_id", "image_path", "mask_paths"]


def samples_to_frame(samples: list[Sample]) -> pd.DataFrame:
    """Flat table of samples, the form the catalog persists as CSV."""
    rows = [
        {
            "key": s.key,
            "category": s.category,
            "split": s.split,
            "defect_type": s.defect_type,
            "label": s.label,
            "image_id": s.image_id,
            "image_path": s.image_path,
            "mask_paths": MASK_PATH_SEPARATOR.join(s.mask_paths),
        }
        for s in samples
    ]
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def frame_to_samples(frame: pd.DataFrame) -> list[Sample]:
    """Inverse of :func:`samples_to_frame` (CSV round trip turns ids like 0003 into ints; undo that)."""
    samples = []
    for row in frame.itertuples(index=False):
        mask_cell = row.mask_paths if isinstance(row.mask_paths, str) else ""
        samples.append(
            Sample(
                category=str(row.category),
                split=str(row.split),
                defect_type=str(row.defect_type),
                image_id=str(row.key).rsplit("/", 1)[-1],
                image_path=str(row.image_path),
                mask_paths=tuple(p for p in mask_cell.split(MASK_PATH_SEPARATOR) if p),
            )
        )
    return samples


def category_info_to_dict(info: CategoryInfo) -> dict:
    """JSON-ready form of a CategoryInfo (the catalog stores these as JSON)."""
    return {
        "name": info.name,
        "image_size": list(info.image_size),
        "has_pixel_ground_truth": info.has_pixel_ground_truth,
        "defects": [
            {
                "defect_name": d.defect_name,
                "pixel_value": d.pixel_value,
                "saturation_threshold": d.saturation_threshold,
                "relative_saturation": d.relative_saturation,
            }
            for d in info.defects
        ],
    }


def category_info_from_dict(data: dict) -> CategoryInfo:
    return CategoryInfo(
        name=data["name"],
        image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
        has_pixel_ground_truth=bool(data["has_pixel_ground_truth"]),
        defects=tuple(DefectConfig(**d) for d in data.get("defects", [])),
    )


T = TypeVar("T")


def group_by_category(items: Iterable[T], category: Callable[[T], str] | None = None) -> dict[str, list[T]]:
    """``items`` grouped by category (sorted by category name), each group in input order.

    ``items`` are :class:`Sample` s unless ``category`` says how to read an item's category
    (e.g. positions into a sample list: ``category=lambda i: samples[i].category``).
    """
    read = category or (lambda item: item.category)
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(read(item), []).append(item)
    return dict(sorted(groups.items()))
