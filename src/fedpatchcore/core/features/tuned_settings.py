"""Tuned per-category settings: a category's ``tuned`` entry, else the run's own blocks.

``params:tuned`` (written by the tune pipeline into ``conf/tuned/parameters.yml``) maps a
category to its own backbone, layers, input size, neighbourhood and image score. The
centralized baseline and every federated client extract, and every variant scores, each such
category with its own setting; a category without an entry (and every category when ``tuned``
is empty, the default) runs exactly as before, from the ``backbone`` / ``extraction`` /
``scoring`` blocks and at ``category_info``'s size (README "Tuning and inspecting new images").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from fedpatchcore.core.data.types import CategoryInfo
from fedpatchcore.core.features.setting import Setting, settings_per_category


def category_settings(
    categories: Iterable[str],
    backbone: Mapping[str, Any],
    extraction: Mapping[str, Any],
    scoring: Mapping[str, Any],
    tuned: Mapping[str, Any] | None,
) -> dict[str, Setting | None]:
    """Category -> its tuned :class:`Setting`, or ``None`` for "the run's own blocks"."""
    tuned = dict(tuned or {})
    chosen = settings_per_category(categories, backbone, extraction, scoring, tuned)
    return {category: (setting if category in tuned else None) for category, setting in chosen.items()}


def blocks_for(
    setting: Setting | None, backbone: Mapping[str, Any], extraction: Mapping[str, Any], scoring: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The ``backbone`` / ``extraction`` / ``scoring`` blocks with ``setting`` applied (None: unchanged)."""
    if setting is None:
        return dict(backbone), dict(extraction), dict(scoring)
    return (
        {**backbone, "name": setting.backbone, "layers": setting.layers, "weights_path": setting.weights_path},
        {**extraction, "neighbourhood": setting.neighbourhood},
        {
            **scoring,
            "image_score": setting.image_score,
            "topk": setting.topk,
            "reweight": setting.reweight,
            "reweight_neighbours": setting.num_neighbours,
        },
    )


def info_for(setting: Setting | None, info: CategoryInfo) -> CategoryInfo:
    """``info`` at the input size ``setting`` uses (None: ``category_info``'s own size)."""
    if setting is None:
        return info
    return replace(info, image_size=tuple(setting.resolved_size(info)))


def groups(settings: Mapping[str, Setting | None]) -> list[tuple[Setting | None, list[str]]]:
    """Categories that share one network (sizes stay per category), in the order of their first category."""
    out: dict[Any, tuple[Setting | None, list[str]]] = {}
    for category, setting in settings.items():
        key = None if setting is None else setting.embedding_key
        out.setdefault(key, (setting, []))[1].append(category)
    return list(out.values())


def describe(settings: Mapping[str, Setting | None], tuned: Mapping[str, Any] | None) -> dict[str, Any]:
    """What each tuned category ran with, for the published metrics."""
    tuned = tuned or {}
    return {
        category: {"setting": setting.name, "val_auroc": (tuned.get(category) or {}).get("val_auroc")}
        for category, setting in sorted(settings.items())
        if setting is not None
    }
