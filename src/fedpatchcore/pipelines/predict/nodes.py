"""Inspect new images with a variant's persisted bank: thresholds from the validation split only.

``kedro run --pipeline predict --params "predict.input=<folder>"``

* :func:`build_models`: one ready-to-score model per category of the bank (the category's
  tuned setting, else the variant's own blocks);
* :func:`calibrate_thresholds`: each category's OK/NOK threshold at
  ``predict.max_false_alarm_rate`` from its GOOD validation images: training images that
  ``validation.enabled`` held out of the bank. It refuses to run when there is no split, or
  when a validation image is among the variant's training images (its bank was trained
  without the split): its score would be too low and the false-alarm rate too high;
* :func:`predict_images`: score, OK/NOK and defect mask of every image under ``predict.input``.

No test label is read: only ``split == "train"`` rows of ``dataset_index`` become samples.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.data.types import TRAIN, frame_to_samples
from fedpatchcore.core.scoring.predict import (
    UNREADABLE,
    bank_models,
    calibrate_from_validation,
    predict_folder,
    save_predictions,
    training_image_sizes,
)
from fedpatchcore.core.scoring.thresholds import calibrations_from_dict, calibrations_to_dict

logger = logging.getLogger(__name__)

RETRAIN = (
    "enable the validation split and retrain, e.g. `kedro run --params validation.enabled=true` "
    "(or `--pipeline centralized --params validation.enabled=true` with predict.variant=centralized), "
    "then run predict again"
)


def unknown_variant(predict: dict[str, Any], *, known: list[str]) -> None:
    raise InputError(f"predict.variant {predict.get('variant')!r} is not a run of this experiment; choose one of {known}")


def _training_keys(training_source: Any) -> set[str]:
    """Image keys a variant trained on: its partition (client -> keys) or its training-image table."""
    if isinstance(training_source, pd.DataFrame):
        return set(training_source["key"].astype(str))
    return {str(key) for keys in dict(training_source).values() for key in keys}


def validation_samples(
    dataset_index: pd.DataFrame, validation_split: pd.DataFrame, training_source: Any, variant: str
) -> list:
    """The good validation images of the split, checked to be outside the variant's training images."""
    if validation_split is None or len(validation_split) == 0 or not (validation_split["role"] == "validation").any():
        raise InputError(f"predict needs a validation split to calibrate its thresholds, and there is none: {RETRAIN}")
    keys = set(validation_split.loc[validation_split["role"] == "validation", "key"].astype(str))
    leaked = keys & _training_keys(training_source)
    if leaked:
        raise InputError(
            f"{len(leaked)} of the {len(keys)} validation images are among the training images of variant "
            f"{variant!r} (e.g. {sorted(leaked)[:3]}): its bank was trained without this validation split, "
            f"so thresholds calibrated on them would flag too many good parts; {RETRAIN}"
        )
    training = dataset_index.loc[dataset_index["split"] == TRAIN]  # test rows are never turned into samples
    return [s for s in frame_to_samples(training) if s.key in keys]


def build_models(
    memory_bank: dict[str, np.ndarray],
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    scoring: dict[str, Any],
    privacy: dict[str, Any],
    seed: int,
    tuned: dict[str, Any] | None = None,
    *,
    runtime: str = "torch",
) -> dict[str, Any]:
    """One scoring model per category of the bank, with the setting the bank was built with;
    its patch embedding computed by ``predict.runtime`` (torch, or the network in ONNX Runtime)."""
    return bank_models(
        memory_bank, category_info, backbone, extraction, scoring, privacy, seed, tuned, runtime=runtime, what="predict"
    )


def calibrate_thresholds(
    models: dict[str, Any],
    dataset_index: pd.DataFrame,
    validation_split: pd.DataFrame,
    training_source: Any,
    predict: dict[str, Any],
    extraction: dict[str, Any],
    *,
    variant: str,
) -> dict[str, dict]:
    """``thresholds.json``: per category the threshold at ``predict.max_false_alarm_rate``."""
    samples = validation_samples(dataset_index, validation_split, training_source, variant)
    calibrations = calibrate_from_validation(
        models,
        samples,
        float(predict["max_false_alarm_rate"]),
        predict.get("calibration", "conformal"),
        batch_size=int(extraction["batch_size"]),
        num_workers=0,
    )
    for category, c in sorted(calibrations.items()):
        logger.info(
            "%s: threshold %.4f from %d good validation images (target false-alarm rate %.3g, %s%s)",
            category,
            c.threshold,
            c.n_good,
            c.max_false_alarm_rate,
            c.method,
            "" if c.guaranteed else ", too few images for its guarantee",
        )
    return calibrations_to_dict(calibrations)


def predict_images(
    models: dict[str, Any], thresholds: dict[str, dict], predict: dict[str, Any], dataset_index: pd.DataFrame
) -> pd.DataFrame:
    """``predictions.csv`` (image, category, score, label, ...); masks/ and overlays/ in ``predict.output_dir``.

    Unreadable images are rows labelled UNREADABLE; an image of a size its category's training
    images (``dataset_index``) do not have is warned about in its row's ``note``.
    """
    if not predict.get("input"):
        raise InputError('predict.input is not set: kedro run --pipeline predict --params "predict.input=<folder>"')
    calibrations = calibrations_from_dict(thresholds)
    training = dataset_index.loc[dataset_index["split"] == TRAIN]  # test rows are never read
    predictions = predict_folder(
        predict["input"],
        models,
        calibrations,
        category=predict.get("category"),
        tile=predict.get("tile"),
        tile_overlap=float(predict.get("tile_overlap", 0.25)),
        pattern=predict.get("pattern"),
        training_sizes=training_image_sizes(s for s in frame_to_samples(training) if s.category in models),
    )
    if not predictions:
        raise InputError(f"predict.input {predict['input']!r} holds no image file (predict.pattern {predict.get('pattern')!r})")
    frame = save_predictions(
        predictions, predict["input"], predict["output_dir"], calibrations, overlays=bool(predict.get("overlays", True))
    )
    counts = frame["label"].value_counts().to_dict()
    logger.info(
        "predict: %d images, %d NOK, %d OK, %d unreadable, %d of an untrained size; masks and overlays in %s",
        len(frame),
        counts.get("NOK", 0),
        counts.get("OK", 0),
        counts.get(UNREADABLE, 0),
        int((frame["note"].astype(bool) & (frame["label"] != UNREADABLE)).sum()),
        predict["output_dir"],
    )
    return frame
