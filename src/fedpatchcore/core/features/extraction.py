"""What one client does with its training images: stream them into patch-feature files.

Full vectors go to a float16 file per category as they are produced; only their random
projection (used to choose the coreset) stays in memory, so a client with a million patches
needs a few hundred MB, not the ~6 GB the vectors would take in float32.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from fedpatchcore.core.common.runtime import resolve_device, set_torch_threads
from fedpatchcore.core.data.types import CategoryInfo, Sample, group_by_category
from fedpatchcore.core.features.backbones import load_backbone
from fedpatchcore.core.features.batches import iter_image_batches
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.features.feature_store import PatchFeatureFile, PatchFeatureWriter

logger = logging.getLogger(__name__)

#: Written into every folder :func:`extract_patch_features` streams into, so that
#: :func:`remove_stale_scratch` deletes only folders extraction made, never other files that
#: share ``extraction.scratch_dir``.
SCRATCH_MARKER = ".fedpatchcore_scratch"


def make_embedder(backbone: Mapping[str, Any], extraction: Mapping[str, Any]) -> PatchEmbedder:
    """The frozen pretrained feature extractor every client and the evaluator share.

    ``backbone`` and ``extraction`` are the parameter blocks of the same names.
    """
    set_torch_threads(extraction["num_threads"])
    device = resolve_device(backbone["device"], parameter="backbone.device")
    network = load_backbone(
        backbone["name"],
        weights_path=backbone.get("weights_path"),
        device=device,
        allow_download=bool(backbone.get("allow_download", False)),
        layers=backbone.get("layers"),
    )
    return PatchEmbedder(network, neighbourhood=extraction["neighbourhood"], device=device)


@dataclass
class ExtractedFeatures:
    """Patch features of one client's training images, one file per category.

    Rows of a category's file come image by image (in ``image_keys`` order), each image's
    ``grid`` = (h, w) patches in row-major order, so row ``r`` is patch
    ``(r // w % h, r % w)`` of image ``image_keys[r // (h * w)]``.
    """

    files: dict[str, PatchFeatureFile]
    image_keys: dict[str, list[str]]  # category -> the images whose patches are in its file
    grid: dict[str, tuple[int, int]]  # category -> (h, w) patches per image
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable images, not in the files
    numbers: dict[str, float] = field(default_factory=dict)  # what the client measured on its images

    @property
    def n_images(self) -> dict[str, int]:
        return {category: len(keys) for category, keys in self.image_keys.items()}


def extract_patch_features(
    samples: Sequence[Sample],
    infos: dict[str, CategoryInfo],
    embedder: PatchEmbedder,
    output_dir: str | Path,
    *,
    batch_size: int,
    projection_dim: int | None,
    seed: int,
    num_workers: int = 2,
    description: str = "extract",
    transform: Callable[[Sample, np.ndarray], np.ndarray] | None = None,
) -> ExtractedFeatures:
    """Embed every image and append its patch vectors to ``<output_dir>/<category>.npy``.

    ``transform(sample, image)`` (optional) sees each decoded uint8 image before the network and
    returns the image to embed (a site's degradations, per-image measurements).

    If anything goes wrong (an exception, Ctrl-C) the files written so far are deleted, and
    ``output_dir`` too when it was empty before, before the error propagates: an interrupted
    extraction leaves no scratch behind (at AutoVI size that is gigabytes per run).
    """
    output_dir = Path(output_dir)
    created = not output_dir.exists() or not any(output_dir.iterdir())
    output_dir.mkdir(parents=True, exist_ok=True)
    marker = output_dir / SCRATCH_MARKER
    marker.touch()
    files: dict[str, PatchFeatureFile] = {}
    skipped: list[dict[str, str]] = []
    image_keys: dict[str, list[str]] = {}
    grid: dict[str, tuple[int, int]] = {}
    writer: PatchFeatureWriter | None = None
    try:
        for category, category_samples in group_by_category(samples).items():
            writer = PatchFeatureWriter(
                output_dir / f"{category}.npy", dim=embedder.feature_dim, projection_dim=projection_dim, seed=seed
            )
            keys, category_grid = _embed_category(
                writer,
                category_samples,
                infos[category],
                embedder,
                batch_size=batch_size,
                skipped=skipped,
                num_workers=num_workers,
                transform=transform,
                description=f"{description} {category}",
            )
            if not keys:
                raise ValueError(f"no readable training image for category {category} (all skipped: see log)")
            files[category] = writer.close()
            writer = None
            image_keys[category], grid[category] = keys, category_grid
            logger.info(
                "%s: %s -> %d images, %d patch vectors of dim %d",
                description,
                category,
                len(keys),
                files[category].n_rows,
                files[category].dim,
            )
    except BaseException:
        _remove_partial_output(writer, files, marker, output_dir if created else None)
        logger.info("%s: extraction stopped; removed its partial output in %s", description, output_dir)
        raise
    return ExtractedFeatures(files, image_keys, grid, skipped)


def _embed_category(
    writer: PatchFeatureWriter,
    samples: Sequence[Sample],
    info: CategoryInfo,
    embedder: PatchEmbedder,
    *,
    batch_size: int,
    skipped: list[dict[str, str]],
    num_workers: int,
    transform: Callable[[Sample, np.ndarray], np.ndarray] | None,
    description: str,
) -> tuple[list[str], tuple[int, int] | None]:
    """Append every readable image's patch vectors to ``writer``: their keys and the patch grid."""
    keys: list[str] = []
    grid = None
    progress = tqdm(total=len(samples), desc=description, unit="img", leave=False)
    # numpy's BLAS (the projection in writer.append) would otherwise start its own threads,
    # which keep spinning after each call and slow the network's threads on the same cores.
    with threadpool_limits(limits=1, user_api="blas"):
        for batch in iter_image_batches(samples, info.image_size, batch_size, skipped, num_workers):
            images = batch.images
            if transform is not None:
                images = np.stack([transform(s, im) for s, im in zip(batch.samples, images, strict=True)])
            patches = embedder.embed(images)
            writer.append(patches.reshape(-1, patches.shape[-1]))
            keys.extend(sample.key for sample in batch.samples)
            grid = (int(patches.shape[1]), int(patches.shape[2]))
            progress.update(len(batch.samples))
    progress.close()
    return keys, grid


def _remove_partial_output(
    writer: PatchFeatureWriter | None, files: dict[str, PatchFeatureFile], marker: Path, created_dir: Path | None
) -> None:
    """Delete what an interrupted extraction wrote (and ``created_dir``, if it made it and it is empty)."""
    if writer is not None:
        writer.abort()
    for feature_file in files.values():
        feature_file.path.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    if created_dir is not None:
        with contextlib.suppress(OSError):  # only if empty: nothing but our own files is deleted
            created_dir.rmdir()


def is_scratch_folder(folder: Path) -> bool:
    """Whether ``folder`` was made by :func:`extract_patch_features`.

    It holds :data:`SCRATCH_MARKER`; or (left by versions before the marker) it is a
    ``client_*`` folder holding nothing but ``.npy`` files.
    """
    if not folder.is_dir():
        return False
    if (folder / SCRATCH_MARKER).is_file():
        return True
    return folder.name.startswith("client_") and all(
        p.is_file() and p.suffix == ".npy" for p in folder.iterdir()
    )


def remove_stale_scratch(scratch_dir: str | Path) -> list[Path]:
    """Delete the extraction folders left in ``scratch_dir`` by runs that did not finish.

    Only folders :func:`is_scratch_folder` recognises are deleted; anything else in
    ``scratch_dir`` is left alone. Call it only while no other run can be extracting into the
    same folder (the Kedro hook calls it while holding the project's run lock). Returns the
    deleted folders.
    """
    scratch_dir = Path(scratch_dir)
    if not scratch_dir.is_dir():
        return []
    removed = []
    for folder in sorted(scratch_dir.iterdir()):
        if is_scratch_folder(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        logger.warning(
            "Removed %d scratch folder(s) of unfinished extractions in %s: %s",
            len(removed),
            scratch_dir,
            ", ".join(p.name for p in removed),
        )
    return removed
