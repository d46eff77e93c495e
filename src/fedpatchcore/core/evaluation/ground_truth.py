"""An image's ground truth as the metrics read it: its OR-merged mask and its defects as sPRO regions.

Used by the metrics of every run and by the report's overlays (the contour drawn over an image).
"""

from __future__ import annotations

import numpy as np

from fedpatchcore.core.data.loading import load_defect_channels, original_size
from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.evaluation.metrics import DefectRegion, saturation_area


def ground_truth(sample: Sample, info: CategoryInfo) -> tuple[np.ndarray, list[DefectRegion]]:
    """One image's OR-merged mask and its channels as sPRO regions, from one read of its masks."""
    width, height = info.image_size
    mask = np.zeros((height, width), dtype=bool)
    channels = load_defect_channels(sample, info)  # empty for a good image
    if not channels:
        return mask, []
    original_width, original_height = original_size(sample.image_path)
    # Absolute saturation thresholds are pixel counts at the original resolution.
    area_scale = (width * height) / (original_width * original_height)
    regions = []
    for channel, config in channels:
        mask |= channel
        if config is None:
            # LOCO semantics for a channel without a config entry: saturate at its full area.
            regions.append(DefectRegion(channel, float(channel.sum()), "unknown"))
            continue
        threshold = config.saturation_threshold
        if not config.relative_saturation:
            threshold *= area_scale
        regions.append(
            DefectRegion(
                channel, saturation_area(channel, threshold, config.relative_saturation), config.defect_name
            )
        )
    return mask, regions
