"""Explain one image: its most anomalous patches, their nearest bank rows and where those came from.

``kedro run --pipeline explain --params "explain.image=<path>,explain.client=<id>"``

The node unpacks the run's artifacts and calls :mod:`fedpatchcore.core.explain.explanation`,
which owns what the three outputs hold and the rule that only the asking client's pixels are
shown (its module doc says how).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.data.loading import load_image
from fedpatchcore.core.data.types import category_info_from_dict, frame_to_samples
from fedpatchcore.core.explain import explanation
from fedpatchcore.core.explain.explanation import (
    BankSources,
    ExplainSettings,
    asking_client_for,
    locate_image,
)
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.federation.client import LocalCoreset
from fedpatchcore.core.privacy.release import PrivacySettings, public_transform


def explain_image(
    explain: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    scoring: dict[str, Any],
    seed: int,
    privacy: dict[str, Any],
    memory_bank: dict[str, np.ndarray],
    dataset_index: pd.DataFrame,
    category_info: dict[str, Any],
    *client_inputs: Any,
    variant: str,
    client_ids: list[str],
    asking_client: str | None,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Explanation (JSON), arrays and pixel crops of ``explain.image`` against ``variant``'s bank.

    ``client_inputs``: each client's local coreset (``client_ids`` order), then, when there is
    an asking client, that client's own training-image table (where its crops come from).
    A private rows bank holds released rows: the image's patches go through the same public
    projection and clipping before they meet it (neighbours, gradients and SHAP alike).
    """
    coresets = client_inputs[: len(client_ids)]
    local_coresets = {cid: LocalCoreset.from_arrays(arrays) for cid, arrays in zip(client_ids, coresets, strict=True)}
    sample, category = locate_image(
        explain.get("image"), explain.get("category"), frame_to_samples(dataset_index), category_info
    )
    info = category_info_from_dict(category_info[category])
    banks = CategoryBanks.from_arrays(memory_bank)
    if banks.radius:
        raise InputError(
            f"variant '{variant}' has a private summary bank (centres and radii, no client rows): explain shows "
            "the nearest client rows of a row bank; choose a rows variant with explain.variant"
        )
    embedder = make_embedder(backbone, extraction)
    own_images = client_inputs[len(client_ids)] if asking_client is not None else None
    own_paths = {} if own_images is None else dict(zip(own_images["key"], own_images["image_path"], strict=True))
    asking = asking_client_for(
        asking_client, category, local_coresets, lambda key: load_image(own_paths[key], info.image_size), variant=variant
    )
    result = explanation.explain_image(
        explain["image"],
        sample,
        category,
        info,
        BankSources.of(banks, local_coresets, category, variant=variant),
        embedder,
        ExplainSettings.from_params(explain, scoring, seed),
        asking,
        variant=variant,
        public_map=public_transform(PrivacySettings.from_parameters(privacy, seed), embedder.feature_dim),
    )
    return result.explanation, result.arrays, result.crops


def unknown_variant(explain: dict[str, Any], *, known: list[str]) -> None:
    """Stand-in when ``explain.variant`` names no variant of this run: says which ones exist."""
    raise InputError(f"explain.variant '{explain.get('variant')}' is not a variant of this run; variants: {known}")


def unknown_client(explain: dict[str, Any], *, client: str, known: list[str]) -> None:
    """Stand-in when ``explain.client`` is no client of the explained variant."""
    raise InputError(
        f"explain.client '{client}' is not a client of variant '{explain.get('variant')}'; its clients: {known}"
    )
