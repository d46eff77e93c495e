"""What one client does with its training images: stream them into patch-feature files.

Full vectors go to a float16 file per category as they are produced; only their random
projection (used to choose the coreset) stays in memory, so a client with a million patches
needs a few hundred MB, not the ~6 GB the vectors would take in float32.
"""

from __future__ import annotations

import logging
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
    """Embed every image and append its patch vectors to ``<output_dir>/<category>.npy``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files, n_images, skipped = {}, {}, []
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
            writer.close()
            raise ValueError(f"no readable training image for category {category} (all skipped: see log)")
        files[category] = writer.close()
        n_images[category] = count
        logger.info(
            "%s: %s -> %d images, %d patch vectors of dim %d",
            description,
            category,
            count,
            files[category].n_rows,
            files[category].dim,
        )
    return ExtractedFeatures(files, n_images, skipped)
