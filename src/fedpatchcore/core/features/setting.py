"""A category's setting: how its images are embedded and how patch scores become an image score.

A :class:`Setting` is one way of running PatchCore on a category (backbone, layers, input size,
neighbourhood, image score). The run's ``backbone`` / ``extraction`` / ``scoring`` blocks make
the default one; ``params:tuned`` (written by the tuner) may give a category its own.
:class:`EmbedderCache` loads one embedder per distinct network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpatchcore.core.data.types import CategoryInfo
from fedpatchcore.core.features import backbones as backbones_module
from fedpatchcore.core.features.embedding import PatchEmbedder

__all__ = ["IMAGE_SCORES", "EmbedderCache", "Setting", "settings_per_category"]

#: Image scores PatchCore's scoring offers (parameter ``scoring.image_score``).
IMAGE_SCORES = ("max", "topk_mean")


def _as_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"an image size must be [width, height] > 0, got {size!r}")
    return int(size[0]), int(size[1])


def _as_layers(layers) -> tuple | None:
    if layers is None:
        return None
    return tuple(int(x) if isinstance(x, int | np.integer) else str(x) for x in layers)


@dataclass(frozen=True)
class Setting:
    """One candidate way of running PatchCore on a category.

    ``layers=None``: the backbone's default stages. ``image_size=None``: the backbone's
    default resolution (:func:`~fedpatchcore.core.features.backbones.default_image_size`), else the
    dataset's size for the category.
    """

    backbone: str = backbones_module.DEFAULT_BACKBONE
    layers: tuple | None = None
    image_size: tuple[int, int] | None = None
    image_score: str = "max"
    topk: int = 10
    reweight: bool = False
    num_neighbours: int = 9
    neighbourhood: int = 3
    weights_path: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _as_layers(self.layers))
        object.__setattr__(self, "image_size", _as_size(self.image_size))
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"Unknown image_score {self.image_score!r}; choose one of {list(IMAGE_SCORES)}")
        if self.reweight and self.image_score != "max":
            raise ValueError("reweight applies to image_score 'max' only")

    @property
    def name(self) -> str:
        """Readable, unique name, e.g. ``efficientnet_lite1[stage3+stage5]@256x256/topk_mean(k=10)``."""
        text = self.backbone
        if self.layers is not None:
            text += "[" + "+".join(str(x) for x in self.layers) + "]"
        text += "@" + ("default" if self.image_size is None else f"{self.image_size[0]}x{self.image_size[1]}")
        if self.neighbourhood != 3:
            text += f"/p{self.neighbourhood}"
        if self.image_score == "topk_mean":
            text += f"/topk_mean(k={self.topk})"
        elif self.reweight:
            text += f"/max+reweight(b={self.num_neighbours})"
        else:
            text += "/max"
        return text

    def resolved_size(self, info: CategoryInfo) -> tuple[int, int]:
        """The input size this setting uses for ``info``'s category."""
        return self.image_size or backbones_module.default_image_size(self.backbone) or tuple(info.image_size)

    @property
    def embedding_key(self) -> tuple:
        """What the patch features depend on: settings equal here share one bank."""
        return (self.backbone, self.weights_path, self.layers, self.image_size, self.neighbourhood)

    def to_params(self) -> dict[str, Any]:
        """The setting as parameter blocks (``backbone``, ``extraction``, ``scoring``, ``image_size``)."""
        return {
            "backbone": {
                "name": self.backbone,
                "layers": None if self.layers is None else list(self.layers),
                "weights_path": self.weights_path,
            },
            "image_size": None if self.image_size is None else list(self.image_size),
            "extraction": {"neighbourhood": self.neighbourhood},
            "scoring": {
                "image_score": self.image_score,
                "topk": self.topk,
                "reweight": self.reweight,
                "reweight_neighbours": self.num_neighbours,
            },
        }

    @classmethod
    def from_params(
        cls,
        backbone: Mapping[str, Any] | None = None,
        extraction: Mapping[str, Any] | None = None,
        scoring: Mapping[str, Any] | None = None,
        image_size=None,
    ) -> Setting:
        """From the ``backbone`` / ``extraction`` / ``scoring`` parameter blocks (missing keys: defaults)."""
        backbone, extraction, scoring = backbone or {}, extraction or {}, scoring or {}
        return cls(
            backbone=backbone.get("name", backbones_module.DEFAULT_BACKBONE),
            layers=backbone.get("layers"),
            weights_path=backbone.get("weights_path"),
            image_size=image_size,
            neighbourhood=int(extraction.get("neighbourhood", 3)),
            image_score=scoring.get("image_score", "max"),
            topk=int(scoring.get("topk", 10)),
            reweight=bool(scoring.get("reweight", False)),
            num_neighbours=int(scoring.get("reweight_neighbours", 9)),
        )

    @classmethod
    def from_tuned(cls, entry: Mapping[str, Any]) -> Setting:
        """Inverse of :meth:`to_params` (one category's entry of the tuned parameters)."""
        return cls.from_params(
            entry.get("backbone"), entry.get("extraction"), entry.get("scoring"), entry.get("image_size")
        )


def settings_per_category(
    categories: Iterable[str],
    backbone: Mapping[str, Any] | None = None,
    extraction: Mapping[str, Any] | None = None,
    scoring: Mapping[str, Any] | None = None,
    tuned: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Setting]:
    """The setting of every category: its ``tuned`` entry (``params:tuned``, written by the tuner)
    when there is one, else the run's ``backbone`` / ``extraction`` / ``scoring`` blocks."""
    default = Setting.from_params(backbone, extraction, scoring)
    tuned = tuned or {}
    return {c: Setting.from_tuned(tuned[c]) if c in tuned else default for c in sorted(categories)}



class EmbedderCache:
    """One :class:`PatchEmbedder` per (backbone, weights, layers, neighbourhood), loaded once."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._embedders: dict[tuple, PatchEmbedder] = {}

    def get(self, setting: Setting) -> PatchEmbedder:
        key = (setting.backbone, setting.weights_path, setting.layers, setting.neighbourhood)
        if key not in self._embedders:
            network = backbones_module.load_backbone(
                setting.backbone, weights_path=setting.weights_path, device=self.device, layers=setting.layers
            )
            self._embedders[key] = PatchEmbedder(
                network, neighbourhood=setting.neighbourhood, device=self.device
            )
        return self._embedders[key]
