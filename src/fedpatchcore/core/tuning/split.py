"""The validation split: a seeded share of each category's TRAINING images, held out of every bank.

No test image and no test label is ever read here: :func:`split_validation` keeps only
``split == "train"`` samples (test samples are dropped before any other attribute of them is
looked at); :func:`build_validation_images` loads the validation images and makes seeded
pseudo-anomalies of them (good validation images are label 0, their pseudo-anomalous copies
label 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.common.seeding import derive_rng, derive_seed
from fedpatchcore.core.data import loading
from fedpatchcore.core.data.index import few_shot_training
from fedpatchcore.core.data.types import TRAIN, Sample, group_by_category
from fedpatchcore.core.tuning.pseudo_anomalies import PSEUDO_ANOMALY_KINDS, make_pseudo_anomalies

__all__ = ["ValidationImages", "ValidationSplit", "build_validation_images", "held_out_keys", "split_validation", "unused_training_keys"]


@dataclass
class ValidationSplit:
    """Training images split into those that build the bank and those that validate it."""

    train: list[Sample]
    validation: list[Sample]

    def by_category(self) -> dict[str, tuple[list[Sample], list[Sample]]]:
        categories = sorted({s.category for s in self.train} | {s.category for s in self.validation})
        return {
            c: ([s for s in self.train if s.category == c], [s for s in self.validation if s.category == c])
            for c in categories
        }

    def to_frame(self) -> pd.DataFrame:
        """``key, category, role`` (role: ``bank`` | ``validation``): the form to persist."""
        rows = [{"key": s.key, "category": s.category, "role": "bank"} for s in self.train]
        rows += [{"key": s.key, "category": s.category, "role": "validation"} for s in self.validation]
        return pd.DataFrame(rows, columns=["key", "category", "role"])


def split_validation(
    samples: Iterable[Sample],
    fraction: float = 0.2,
    seed: int = 0,
    min_validation: int = 2,
    min_train: int = 2,
) -> ValidationSplit:
    """Seeded validation split of each category's TRAINING images; test samples are ignored.

    Per category, ``round(fraction * n)`` training images (at least ``min_validation``, leaving
    at least ``min_train`` for the bank) go to validation, chosen by a permutation seeded with
    ``(seed, "validation_split", category)`` over the images sorted by key, so the split of one category does not
    depend on which other categories are present. Both lists keep the input order.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"validation.fraction must be in (0, 1), got {fraction}")
    # Only ``split`` is read from a test sample: nothing else of it is ever looked at.
    train_only = [s for s in samples if s.split == TRAIN]
    chosen: set[str] = set()
    for category, group in group_by_category(train_only).items():
        n = len(group)
        if n < min_validation + min_train:
            raise ValueError(
                f"category {category!r} has {n} training images: too few for a validation split of "
                f"at least {min_validation} while keeping {min_train} for the memory bank"
            )
        n_val = int(np.clip(round(float(fraction) * n), min_validation, n - min_train))
        keys = sorted(s.key for s in group)
        order = derive_rng(seed, "validation_split", category).permutation(n)
        chosen.update(keys[i] for i in order[:n_val])
    return ValidationSplit(
        train=[s for s in train_only if s.key not in chosen],
        validation=[s for s in train_only if s.key in chosen],
    )


# --------------------------------------------------------------------------------------------
# validation images with pseudo-anomalies


def held_out_keys(samples: Iterable[Sample], validation: Mapping[str, Any] | None, seed: int) -> set[str]:
    """Keys of the training images the validation split holds out of every bank.

    None unless ``validation.enabled``; otherwise :func:`split_validation` at
    ``validation.fraction`` (the ``validation`` parameter block), seeded by the run's ``seed``.
    """
    if not validation or not validation.get("enabled", False):
        return set()
    split = split_validation(samples, float(validation["fraction"]), int(seed))
    return {s.key for s in split.validation}


def unused_training_keys(
    samples: Iterable[Sample], validation: Mapping[str, Any] | None, train_shots: int | str | None, seed: int
) -> set[str]:
    """Training images no bank is built from: the validation split's (:func:`held_out_keys`), and
    with ``dataset.train_shots`` every image beyond the seeded few-shot subset of the rest."""
    samples = list(samples)
    held_out = held_out_keys(samples, validation, seed)
    if train_shots in (None, "all"):
        return held_out
    rest = [s for s in samples if s.key not in held_out]
    kept = {s.key for s in few_shot_training(rest, train_shots, int(seed))}
    return held_out | {s.key for s in rest if s.split == TRAIN and s.key not in kept}


@dataclass
class ValidationImages:
    """One category's good validation images and their pseudo-anomalous copies, at one size."""

    category: str
    size: tuple[int, int]  # (width, height)
    good: np.ndarray  # uint8 (n, H, W, 3)
    anomalous: np.ndarray  # uint8 (m, H, W, 3)
    masks: np.ndarray  # bool (m, H, W): the pixels each pseudo-anomaly changed
    kinds: list[str]
    sources: list[int]  # index into ``good`` each anomaly was made from

    @property
    def images(self) -> np.ndarray:
        return np.concatenate([self.good, self.anomalous])

    @property
    def labels(self) -> np.ndarray:
        return np.r_[np.zeros(len(self.good), int), np.ones(len(self.anomalous), int)]


def build_validation_images(
    validation_samples: Sequence[Sample],
    size: tuple[int, int],
    seed: int = 0,
    kinds: Sequence[str] = PSEUDO_ANOMALY_KINDS,
    per_image: int = 1,
) -> ValidationImages:
    """Load one category's validation images at ``size`` and make their pseudo-anomalies.

    Raises ValueError for a test sample or a mix of categories: only training images may be used.
    """
    if not validation_samples:
        raise ValueError("no validation images")
    categories = {s.category for s in validation_samples}
    if len(categories) != 1:
        raise ValueError(f"validation images of one category expected, got {sorted(categories)}")
    if any(s.split != TRAIN for s in validation_samples):
        raise ValueError("validation images must come from the training split, never from test")
    category = categories.pop()
    size = (int(size[0]), int(size[1]))
    good = np.stack([loading.load_image(s.image_path, size) for s in validation_samples])
    anomalies, sources = make_pseudo_anomalies(
        good,
        seed=derive_seed(seed, "pseudo_anomalies", category),
        kinds=kinds,
        per_image=per_image,
    )
    return ValidationImages(
        category,
        size,
        good,
        np.stack([a.image for a in anomalies]),
        np.stack([a.mask for a in anomalies]),
        [a.kind for a in anomalies],
        sources,
    )


