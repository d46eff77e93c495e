"""Few-shot training subsets (dataset.train_shots): seeded, nested, per category, test untouched."""

from __future__ import annotations

import pandas as pd
import pytest

from fedpatchcore.core.data.index import few_shot_training
from fedpatchcore.core.data.types import Sample, samples_to_frame
from fedpatchcore.core.tuning.split import unused_training_keys


def _samples() -> list[Sample]:
    out = []
    for category in ("a", "b"):
        for i in range(10):
            out.append(Sample(category, "train", "good", f"{i:04d}", f"/x/{category}/train/{i}.png"))
        out.append(Sample(category, "test", "scratch", "0000", f"/x/{category}/test/0.png"))
    return out


def _train_keys(samples, category):
    return {s.key for s in samples if s.split == "train" and s.category == category}


def test_shots_per_category_nested_and_seeded():
    samples = _samples()
    one, four = few_shot_training(samples, 1, seed=0), few_shot_training(samples, 4, seed=0)
    for category in ("a", "b"):
        assert len(_train_keys(one, category)) == 1 and len(_train_keys(four, category)) == 4
        assert _train_keys(one, category) <= _train_keys(four, category)
    assert {s.key for s in four if s.split == "test"} == {s.key for s in samples if s.split == "test"}
    assert few_shot_training(samples, 4, seed=0) == four
    assert _train_keys(few_shot_training(samples, 4, seed=1), "a") != _train_keys(four, "a")
    assert few_shot_training(samples, "all", seed=0) == samples
    assert len(_train_keys(few_shot_training(samples, 50, seed=0), "a")) == 10  # fewer images: all
    with pytest.raises(ValueError, match="train_shots"):
        few_shot_training(samples, 0, seed=0)


def test_validation_images_are_held_out_before_the_shots_are_drawn():
    samples = _samples()
    index: pd.DataFrame = samples_to_frame(samples)
    validation = {"enabled": True, "fraction": 0.2}
    unused = unused_training_keys(samples, validation, 1, seed=0)
    held_out = unused_training_keys(samples, validation, "all", seed=0)
    train = set(index.loc[index["split"] == "train", "key"])
    assert len(held_out) == 4  # 2 validation images per category
    assert held_out <= unused and len(train - unused) == 2  # one bank image per category
    assert not (set(index.loc[index["split"] == "test", "key"]) & unused)
