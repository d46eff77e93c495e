"""Inspect new images with a persisted memory bank: score, OK/NOK label and defect mask.

* :func:`build_category_models` turns a bank per category (e.g. the federated global bank,
  :class:`~fedpatchcore.core.banks.CategoryBanks`) and the setting each category was built
  with into ready-to-score :class:`CategoryModel`\\ s (one backbone per distinct setting);
  ``runtime`` (:data:`RUNTIMES`) says what computes the patch embedding: ``torch`` (the
  training code) or ``onnx`` (the same network exported at the category's input size and run
  by ONNX Runtime, as on an inspection station); the rest of scoring is shared;
* :func:`calibrate_from_validation` scores the GOOD validation images of each category
  (training images held out of the bank, :func:`~fedpatchcore.core.tuning.split.split_validation`)
  and sets its threshold at a target false-alarm rate (:mod:`fedpatchcore.core.scoring.thresholds`).
  It refuses any sample outside the training split, so no test image or label is ever used;
* :func:`predict_folder` scores every image under a folder: per image a raw score, its
  per-category normalised score (1 = threshold), ``OK``/``NOK`` and a defect mask at the
  original image size (anomaly map above the category's pixel threshold, for NOK images);
  large images can be cut into overlapping tiles, each scored at the model's input size;
* :func:`save_predictions` writes ``predictions.csv`` (``image, category, score, label`` +
  ``normalised_score, threshold, tiles, width, height, category_from, note``), one mask PNG
  and one overlay PNG per image.

The category of an image is, in this order (``category_from``): the ``category`` argument
(``predict.category``); the first folder of its path below the input folder that is a
category name (``folder``); the only category (``only category``); else the category whose
normalised score is lowest, the part it looks most like (``best fit``).

Nothing is dropped silently: a file that cannot be read is a row with label ``UNREADABLE``
and the reason in ``note``; an image whose size (``width``, ``height``) is not a size of its
category's training images is still scored (resized to the model's input, as always) but
warned about, and ``note`` says so: a part seen at another scale scores differently. This
module does not import kedro.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
from PIL import Image

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.data import loading
from fedpatchcore.core.data.types import TRAIN, CategoryInfo, Sample, category_info_from_dict
from fedpatchcore.core.features import tuned_settings
from fedpatchcore.core.features.batches import iter_image_batches
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.features.onnx_embedder import OnnxEmbedder
from fedpatchcore.core.features.setting import EmbedderCache, Setting
from fedpatchcore.core.scoring.patch_scores import score_images
from fedpatchcore.core.scoring.thresholds import Calibration, calibrate

logger = logging.getLogger(__name__)

__all__ = [
    "PREDICTION_COLUMNS",
    "RUNTIMES",
    "CategoryModel",
    "Prediction",
    "bank_models",
    "build_category_models",
    "calibrate_from_validation",
    "list_images",
    "overlay",
    "predict_folder",
    "predict_image",
    "predictions_frame",
    "save_predictions",
    "score_samples",
    "tile_boxes",
    "training_image_sizes",
    "UNREADABLE",
]

PREDICTION_COLUMNS = [
    "image",
    "category",
    "score",
    "label",
    "normalised_score",
    "threshold",
    "tiles",
    "width",
    "height",
    "category_from",
    "note",
]
UNREADABLE = "UNREADABLE"  # label of a file that could not be read (the reason is in `note`)
#: What computes the patch embedding (parameter ``predict.runtime``).
RUNTIMES = ("torch", "onnx")


@dataclass
class CategoryModel:
    """Everything needed to score images of one category."""

    category: str
    setting: Setting
    image_size: tuple[int, int]  # (width, height) images are resized to for the network
    embedder: PatchEmbedder | OnnxEmbedder  # anything with embed(uint8 images) -> (B, h, w, d) features
    bank: np.ndarray
    index: faiss.Index
    sigma: float = 4.0

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw anomaly maps ``(B, H, W)`` and image scores ``(B,)`` of uint8 images at ``image_size``."""
        features = self.embedder.embed(images)
        return score_images(
            self.index,
            features,
            self.image_size,
            sigma=self.sigma,
            reweight=self.setting.reweight,
            bank=self.bank,
            num_neighbours=self.setting.num_neighbours,
            image_score=self.setting.image_score,
            topk=self.setting.topk,
        )


def build_category_models(
    banks: Mapping[str, np.ndarray],
    infos: Mapping[str, CategoryInfo],
    settings: Setting | Mapping[str, Setting],
    *,
    sigma: float = 4.0,
    device: str = "cpu",
    approximate_index_above: int | None = None,
    seed: int = 0,
    embedders: EmbedderCache | None = None,
    runtime: str = "torch",
) -> dict[str, CategoryModel]:
    """One :class:`CategoryModel` per category of ``banks``.

    ``settings``: one :class:`Setting` for all categories, or one per category (the tuned
    choice); a bank must have been built with its category's setting (same backbone, layers,
    resolution and neighbourhood), otherwise its dimension will not match. ``runtime``: one of
    :data:`RUNTIMES` (``onnx``: one ONNX Runtime session per network and input size).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"Unknown predict.runtime {runtime!r}; choose one of {list(RUNTIMES)}")
    embedders = embedders or EmbedderCache(device)
    exported: dict[tuple, OnnxEmbedder] = {}
    models = {}
    for category, bank in sorted(banks.items()):
        if category not in infos:
            raise ValueError(f"bank category {category!r} has no CategoryInfo")
        setting = settings if isinstance(settings, Setting) else settings[category]
        embedder = embedders.get(setting)
        size = tuple(setting.resolved_size(infos[category]))
        if runtime == "onnx":
            key = (setting.embedding_key, size)
            if key not in exported:
                exported[key] = OnnxEmbedder.from_embedder(embedder, size)
            embedder = exported[key]
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        if bank.ndim != 2 or bank.shape[1] != embedder.feature_dim:
            raise ValueError(
                f"bank of {category!r} has shape {bank.shape} but setting {setting.name} gives "
                f"{embedder.feature_dim}-dim features: was it built with another setting?"
            )
        approximate = approximate_index_above is not None and len(bank) > int(approximate_index_above)
        models[category] = CategoryModel(
            category,
            setting,
            size,
            embedder,
            bank,
            build_index(bank, approximate=approximate, seed=seed),
            float(sigma),
        )
    return models


def bank_models(
    memory_bank: Mapping[str, np.ndarray],
    category_info: Mapping[str, Any],
    backbone: Mapping[str, Any],
    extraction: Mapping[str, Any],
    scoring: Mapping[str, Any],
    privacy: Mapping[str, Any],
    seed: int,
    tuned: Mapping[str, Any] | None = None,
    *,
    runtime: str = "torch",
    what: str = "predict",
) -> dict[str, CategoryModel]:
    """One ready-to-score model per category of a persisted bank, with the setting it was built
    with (its ``tuned`` entry, else the run's blocks at ``category_info``'s size): what ``predict``
    scores with and what ``export.inspector`` ships. ``what`` names the caller in errors."""
    if (privacy or {}).get("enabled", False):
        raise InputError(
            f"{what} does not score against a differentially private bank yet (privacy.enabled): the public "
            "projection/clipping of test patches is applied by the evaluate pipeline only"
        )
    loaded = CategoryBanks.from_arrays(memory_bank)
    if loaded.radius:
        raise InputError(
            f"{what} does not score against a summary bank (privacy.mechanism: summary): its centres are scored "
            "by distance over radius, which the evaluate pipeline does"
        )
    banks = loaded.banks
    infos = {name: category_info_from_dict(category_info[name]) for name in banks}
    default = Setting.from_params(backbone, extraction, scoring)
    chosen = tuned_settings.category_settings(banks, backbone, extraction, scoring, tuned)
    # A category without a tuned entry was trained at category_info's size: say so exactly.
    settings = {c: s if s is not None else replace(default, image_size=infos[c].image_size) for c, s in chosen.items()}
    return build_category_models(
        banks,
        infos,
        settings,
        sigma=float(scoring["sigma"]),
        device=backbone.get("device", "cpu"),
        approximate_index_above=scoring.get("approximate_index_above"),
        seed=int(seed),
        embedders=EmbedderCache(backbone.get("device", "cpu")),
        runtime=runtime,
    )


def score_samples(
    model: CategoryModel, samples: Sequence[Sample], batch_size: int = 8, num_workers: int = 0
) -> tuple[list[Sample], np.ndarray, np.ndarray]:
    """Image scores and map maxima of ``samples`` (unreadable ones skipped and logged)."""
    kept, scores, maxima, skipped = [], [], [], []
    for batch in iter_image_batches(samples, model.image_size, batch_size, skipped, num_workers):
        maps, batch_scores = model.score(batch.images)
        kept.extend(batch.samples)
        scores.append(batch_scores)
        maxima.append(maps.reshape(len(maps), -1).max(axis=1))
    if not kept:
        return [], np.empty(0, np.float32), np.empty(0, np.float32)
    return kept, np.concatenate(scores), np.concatenate(maxima)


def calibrate_from_validation(
    models: Mapping[str, CategoryModel],
    validation_samples: Iterable[Sample],
    max_false_alarm_rate: float = 0.05,
    method: str = "conformal",
    batch_size: int = 8,
    num_workers: int = 0,
) -> dict[str, Calibration]:
    """Thresholds per category from its GOOD validation images (training split only).

    The validation images must not be in the bank (use the bank-building half of the
    validation split), or their scores are too low and the false-alarm rate too high.
    Raises ValueError for any sample that is not a good training image.
    """
    by_category: dict[str, list[Sample]] = {}
    for sample in validation_samples:
        if sample.split != TRAIN:
            raise ValueError(
                f"calibration must use validation images from the training split only; got {sample.split!r} "
                f"sample {sample.image_path}"
            )
        by_category.setdefault(sample.category, []).append(sample)
    calibrations = {}
    for category, model in sorted(models.items()):
        samples = by_category.get(category, [])
        kept, scores, maxima = score_samples(model, samples, batch_size, num_workers)
        if not kept:
            raise ValueError(f"no readable validation image for category {category!r}: cannot calibrate it")
        separate_maxima = model.setting.image_score != "max" or model.setting.reweight
        calibrations[category] = calibrate(
            scores,
            max_false_alarm_rate,
            method,
            category=category,
            good_map_maxima=maxima if separate_maxima else None,
        )
    return calibrations


# --------------------------------------------------------------------------------------------
# new images


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, hidden files skipped), in natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"predict.input {str(folder)!r} is not a folder")
    files = [
        p
        for p in folder.rglob("*")
        if loading.is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda p: loading.natural_key(p.relative_to(folder).as_posix()))


def tile_boxes(
    width: int, height: int, tile: tuple[int, int], overlap: float = 0.25
) -> list[tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` boxes of ``tile`` = (w, h) covering the image, overlapping
    by at least ``overlap`` of a tile; the last row/column is flush with the border."""
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"predict.tile_overlap must be in [0, 1), got {overlap}")
    tw, th = min(int(tile[0]), width), min(int(tile[1]), height)

    def starts(total: int, size: int) -> list[int]:
        if size >= total:
            return [0]
        step = max(1, int(size * (1.0 - float(overlap))))
        count = math.ceil((total - size) / step) + 1
        return sorted({min(i * step, total - size) for i in range(count)})

    return [(x, y, x + tw, y + th) for y in starts(height, th) for x in starts(width, tw)]


@dataclass
class Prediction:
    image: str  # path relative to the input folder (posix)
    category: str | None  # None: unreadable, and nothing else named its category
    score: float  # raw image score (NaN when unreadable)
    normalised_score: float  # 0 = typical good image of the category, 1 = its threshold
    label: str  # "OK" | "NOK" | UNREADABLE
    threshold: float
    anomaly_map: np.ndarray | None  # float32 (H, W) raw distances at the original image size
    mask: np.ndarray | None  # bool (H, W) at the original image size: the defect (empty when OK)
    tiles: int = 1
    width: int | None = None  # original size of the image file
    height: int | None = None
    category_from: str = ""  # how the category was chosen: predict.category | folder | only category | best fit
    note: str = ""  # why a row needs a look: unreadable (the reason), a size its category was not trained at


def _resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    if anomaly_map.shape == (height, width):
        return anomaly_map.astype(np.float32, copy=False)
    return np.asarray(Image.fromarray(anomaly_map.astype(np.float32)).resize((width, height), Image.BILINEAR))


def _score_path(
    path: Path, model: CategoryModel, tile: tuple[int, int] | None, overlap: float, batch_size: int
) -> tuple[float, np.ndarray, int]:
    """(image score, raw map at the original size, number of tiles) of one image file."""
    size = loading.original_size(path)
    width, height = size
    if tile is None or (width <= int(tile[0]) and height <= int(tile[1])):
        # a writable copy: torch warns on the read-only arrays PIL hands out
        maps, scores = model.score(np.array(loading.load_image(path, model.image_size)[None]))
        return float(scores[0]), _resize_map(maps[0], size), 1
    full = loading.load_image(path, size)  # no resize: the original pixels
    boxes = tile_boxes(width, height, tile, overlap)
    stitched = np.full((height, width), -np.inf, dtype=np.float32)
    best = -np.inf
    for start in range(0, len(boxes), max(1, batch_size)):
        chunk = boxes[start : start + batch_size]
        crops = np.stack(
            [
                np.asarray(
                    Image.fromarray(full[top:bottom, left:right]).resize(model.image_size, Image.BILINEAR)
                )
                for (left, top, right, bottom) in chunk
            ]
        )
        maps, scores = model.score(crops)
        best = max(best, float(scores.max()))
        for (left, top, right, bottom), tile_map in zip(chunk, maps, strict=True):
            region = stitched[top:bottom, left:right]
            np.maximum(region, _resize_map(tile_map, (right - left, bottom - top)), out=region)
    return best, stitched, len(boxes)


def predict_image(
    path: str | Path,
    model: CategoryModel,
    calibration: Calibration,
    *,
    tile: tuple[int, int] | None = None,
    tile_overlap: float = 0.25,
    batch_size: int = 8,
    name: str | None = None,
) -> Prediction:
    """Score one image file with ``model`` and decide OK/NOK at ``calibration``'s threshold.

    With ``tile`` = (w, h) in original pixels, an image larger than a tile is cut into
    overlapping tiles (each resized to the model's input size, as the training images were);
    the image score is the highest tile score and the map the per-pixel maximum over tiles.
    """
    path = Path(path)
    score, anomaly_map, n_tiles = _score_path(path, model, tile, tile_overlap, batch_size)
    anomalous = bool(calibration.is_anomalous(score))
    mask = (anomaly_map > calibration.pixel_threshold) if anomalous else np.zeros(anomaly_map.shape, bool)
    return Prediction(
        image=name or path.name,
        category=model.category,
        score=score,
        normalised_score=float(calibration.normalise(score)),
        label="NOK" if anomalous else "OK",
        threshold=calibration.threshold,
        anomaly_map=anomaly_map,
        mask=mask,
        tiles=n_tiles,
    )


def training_image_sizes(samples: Iterable[Sample]) -> dict[str, set[tuple[int, int]]]:
    """Per category, the original sizes ``(width, height)`` of its training images (headers only)."""
    sizes: dict[str, set[tuple[int, int]]] = {}
    for sample in samples:
        if sample.split == TRAIN:
            sizes.setdefault(sample.category, set()).add(loading.original_size(sample.image_path))
    return sizes


def _category_from_path(relative: Path, categories: Iterable[str]) -> str | None:
    names = set(categories)
    for part in relative.parts[:-1]:
        if part in names:
            return part
    return None


def _choose_category(relative: Path, models: Mapping[str, CategoryModel], category: str | None) -> tuple[str | None, str]:
    """The category an image is scored as, and how it was chosen (None, "best fit": try them all)."""
    if category is not None:
        return category, "predict.category"
    from_folder = _category_from_path(relative, models)
    if from_folder is not None:
        return from_folder, "folder"
    if len(models) == 1:
        return next(iter(models)), "only category"
    return None, "best fit"


def _sizes_text(sizes: Iterable[tuple[int, int]]) -> str:
    return ", ".join(f"{w}x{h}" for w, h in sorted(sizes))


def _size_note(prediction: Prediction, model: CategoryModel, trained: Collection[tuple[int, int]] | None) -> str:
    """Why the image's size needs a look ("" when it is a size its category was trained at)."""
    size = (prediction.width, prediction.height)
    if not trained or size in trained:
        return ""
    return (
        f"image is {size[0]}x{size[1]} but {prediction.category}'s training images are {_sizes_text(trained)}: "
        f"resized to the model's {_sizes_text([model.image_size])} input, its score may not compare"
    )


def _unreadable(name: str, category: str | None, category_from: str, error: Exception) -> Prediction:
    nan = float("nan")
    return Prediction(
        image=name,
        category=category,
        score=nan,
        normalised_score=nan,
        label=UNREADABLE,
        threshold=nan,
        anomaly_map=None,
        mask=None,
        tiles=0,
        category_from=category_from,
        note=str(error),
    )


def _predict_path(
    path: Path,
    name: str,
    models: Mapping[str, CategoryModel],
    calibrations: Mapping[str, Calibration],
    chosen: str | None,
    **kwargs,
) -> Prediction:
    """One readable image scored as ``chosen``, or as every category keeping the best fit."""
    width, height = loading.original_size(path)
    if chosen is not None:
        prediction = predict_image(path, models[chosen], calibrations[chosen], name=name, **kwargs)
    else:
        candidates = [predict_image(path, models[c], calibrations[c], name=name, **kwargs) for c in sorted(models)]
        prediction = min(candidates, key=lambda p: p.normalised_score)
    prediction.width, prediction.height = width, height
    return prediction


def predict_folder(
    input_dir: str | Path,
    models: Mapping[str, CategoryModel],
    calibrations: Mapping[str, Calibration],
    *,
    category: str | None = None,
    tile: tuple[int, int] | None = None,
    tile_overlap: float = 0.25,
    batch_size: int = 8,
    pattern: str | None = None,
    training_sizes: Mapping[str, Collection[tuple[int, int]]] | None = None,
) -> list[Prediction]:
    """:func:`predict_image` for every image under ``input_dir`` (see the module doc for categories).

    ``pattern``: only images whose path below ``input_dir`` (posix) matches this
    :func:`fnmatch.fnmatch` glob, e.g. ``"*/test/*/*"`` (``*`` also matches ``/``).
    ``training_sizes``: per category the sizes of its training images
    (:func:`training_image_sizes`); an image of another size is warned about and noted.
    An unreadable file is a row labelled :data:`UNREADABLE`, with the reason in ``note``.
    """
    input_dir = Path(input_dir)
    missing = sorted(set(models) - set(calibrations))
    if missing:
        raise ValueError(f"no calibrated threshold for categories {missing}")
    if category is not None and category not in models:
        raise ValueError(f"predict.category {category!r} has no bank; known: {sorted(models)}")
    tile = None if tile is None else (int(tile[0]), int(tile[1]))
    kwargs = {"tile": tile, "tile_overlap": tile_overlap, "batch_size": batch_size}
    predictions = []
    for path in list_images(input_dir):
        name = path.relative_to(input_dir).as_posix()
        if pattern is not None and not fnmatch.fnmatch(name, pattern):
            continue
        chosen, category_from = _choose_category(Path(name), models, category)
        try:
            prediction = _predict_path(path, name, models, calibrations, chosen, **kwargs)
        except loading.ImageReadError as error:
            logger.warning("Unreadable image %s (a row labelled %s in the predictions): %s", path, UNREADABLE, error)
            predictions.append(_unreadable(name, chosen, category_from, error))
            continue
        prediction.category_from = category_from
        prediction.note = _size_note(prediction, models[prediction.category], (training_sizes or {}).get(prediction.category))
        if prediction.note:
            logger.warning("%s (category %s by %s): %s", name, prediction.category, category_from, prediction.note)
        predictions.append(prediction)
    return predictions


def predictions_frame(predictions: Sequence[Prediction]) -> pd.DataFrame:
    """One row per image (:data:`PREDICTION_COLUMNS`): ``predictions.csv``."""
    frame = pd.DataFrame(
        [{column: getattr(p, column) for column in PREDICTION_COLUMNS} for p in predictions],
        columns=PREDICTION_COLUMNS,
    )
    return frame.astype({"width": "Int64", "height": "Int64"})  # integers, empty when unreadable


def overlay(
    image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray, calibration: Calibration
) -> np.ndarray:
    """uint8 RGB: the image tinted by the map on the category's fixed scale (normalised 0..2,
    never per image) with the defect mask outlined in red."""
    from matplotlib import colormaps
    from scipy.ndimage import binary_erosion

    level = np.clip(calibration.normalise(anomaly_map), 0.0, 2.0) / 2.0
    heat = colormaps["jet"](level)[..., :3] * 255.0
    alpha = (0.6 * np.clip(level * 2.0, 0.0, 1.0))[..., None]
    out = image.astype(np.float64) * (1 - alpha) + heat * alpha
    edge = mask & ~binary_erosion(mask, iterations=max(1, min(mask.shape) // 150))
    out[edge] = (255, 0, 0)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_predictions(
    predictions: Sequence[Prediction],
    input_dir: str | Path,
    output_dir: str | Path,
    calibrations: Mapping[str, Calibration],
    overlays: bool = True,
) -> pd.DataFrame:
    """Write ``predictions.csv``, ``masks/<image>.png`` and (optionally) ``overlays/<image>.png``
    (no mask or overlay for an unreadable image)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    frame = predictions_frame(predictions)
    frame.to_csv(output_dir / "predictions.csv", index=False)
    for p in predictions:
        if p.mask is None:
            continue
        stem = Path(p.image).with_suffix(".png")
        mask_path = output_dir / "masks" / stem
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p.mask.astype(np.uint8) * 255).save(mask_path)
        if overlays:
            image = loading.load_image(input_dir / p.image, (p.mask.shape[1], p.mask.shape[0]))
            overlay_path = output_dir / "overlays" / stem
            overlay_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(overlay(image, p.anomaly_map, p.mask, calibrations[p.category])).save(
                overlay_path
            )
    return frame
