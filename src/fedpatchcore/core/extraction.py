"""What one client does with its training images: stream them into patch-feature files.

Full vectors go to a float16 file per category as they are produced; only their random
projection (used to choose the coreset) stays in memory, so a client with a million patches
needs a few hundred MB, not the ~6 GB the vectors would take in float32.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from fedpatchcore.core.batches import iter_image_batches
from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.feature_store import PatchFeatureFile, PatchFeatureWriter
from fedpatchcore.core.patchcore import PatchEmbedder

logger = logging.getLogger(__name__)

#: Written into every folder :func:`extract_patch_features` streams into, so that
#: :func:`remove_stale_scratch` deletes only folders extraction made, never other files that
#: share ``extraction.scratch_dir``.
SCRATCH_MARKER = ".fedpatchcore_scratch"


@dataclass
class ExtractedFeatures:
    """Patch features of one client's training images, one file per category."""

    files: dict[str, PatchFeatureFile]
    n_images: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)


def group_by_category(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.category].append(sample)
    return dict(sorted(groups.items()))


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
) -> ExtractedFeatures:
    """Embed every image and append its patch vectors to ``<output_dir>/<category>.npy``.

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
    n_images: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    writer: PatchFeatureWriter | None = None
    try:
        for category, category_samples in group_by_category(samples).items():
            info = infos[category]
            writer = PatchFeatureWriter(
                output_dir / f"{category}.npy",
                dim=embedder.feature_dim,
                projection_dim=projection_dim,
                seed=seed,
            )
            count = 0
            progress = tqdm(
                total=len(category_samples), desc=f"{description} {category}", unit="img", leave=False
            )
            # numpy's BLAS (the projection in writer.append) would otherwise start its own threads,
            # which keep spinning after each call and slow the network's threads on the same cores.
            with threadpool_limits(limits=1, user_api="blas"):
                for batch in iter_image_batches(
                    category_samples, info.image_size, batch_size, skipped, num_workers
                ):
                    patches = embedder.embed(batch.images)
                    writer.append(patches.reshape(-1, patches.shape[-1]))
                    count += len(batch.samples)
                    progress.update(len(batch.samples))
            progress.close()
            if count == 0:
                raise ValueError(f"no readable training image for category {category} (all skipped: see log)")
            files[category] = writer.close()
            writer = None
            n_images[category] = count
            logger.info(
                "%s: %s -> %d images, %d patch vectors of dim %d",
                description,
                category,
                count,
                files[category].n_rows,
                files[category].dim,
            )
    except BaseException:
        if writer is not None:
            writer.abort()
        for feature_file in files.values():
            feature_file.path.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):  # only if empty: nothing but our own files is deleted
                output_dir.rmdir()
        logger.info("%s: extraction stopped; removed its partial output in %s", description, output_dir)
        raise
    return ExtractedFeatures(files, n_images, skipped)


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
