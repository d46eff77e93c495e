"""Fitting the experts across sites from sufficient statistics: the protocol both the
centralized baseline (one site) and a federation (many) run.

    site  ──site_statistics──► Gaussian sums per category (global, position)  ┐ with the coreset
    server ─start_fit(sums, bank)──► Gaussians fitted; k-means starts from the bank's rows
    repeat lloyd_rounds + 1 times:
      site  ──site_round(centroids)──► per category and k: Lloyd sums + histogram sums
      server ─server_round──► centroids moved to the means (the last round: histogram Gaussians)
    server ─finish──► CategoryExperts per category

Everything a site sends is a sum over its images (:class:`~.gaussian.MomentSums`,
:class:`~.kmeans.LloydSums`), so the merged statistics, the centroids after every round and the
fitted experts are exactly (to float rounding) those of one site holding all the images. No
patch, image or per-image number leaves a site. Every message has a flat
``dict[str, np.ndarray]`` form (``<category>/...`` keys) for the catalog and the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpatchcore.core.experts.gaussian import MomentSums, fit_gaussian
from fedpatchcore.core.experts.kmeans import (
    LloydSums,
    histograms,
    initial_centroids,
    lloyd_sums,
    update_centroids,
)
from fedpatchcore.core.experts.model import (
    CategoryExperts,
    CategoryStatistics,
    ExpertSettings,
    Projections,
    category_statistics,
)
from fedpatchcore.core.features import tuned_settings
from fedpatchcore.core.features.backbones import stage_channels
from fedpatchcore.core.features.extraction import ExtractedFeatures
from fedpatchcore.core.features.feature_store import PatchFeatureFile

__all__ = [
    "ExpertFit",
    "SiteFeatures",
    "finish",
    "image_batches",
    "message_nbytes",
    "server_round",
    "site_round",
    "site_features",
    "traffic",
    "site_statistics",
    "start_fit",
]

#: Images read from a feature file at a time (the patches of a few images fit in memory).
IMAGES_PER_BATCH = 16


@dataclass
class SiteFeatures:
    """One site's patch-feature file of one category, its patch grid (h, w) and how many of its
    channels come from the backbone's shallow stage (0: unknown)."""

    file: PatchFeatureFile
    grid: tuple[int, int]
    shallow_dim: int = 0


def site_features(features: ExtractedFeatures, shallow_dims: Mapping[str, int] | None = None) -> dict[str, SiteFeatures]:
    """A site's extracted features per category (``shallow_dims``: each category's shallow-stage channels)."""
    shallow_dims = shallow_dims or {}
    return {
        category: SiteFeatures(file, features.grid[category], int(shallow_dims.get(category, 0)))
        for category, file in features.files.items()
    }


def shallow_channels(
    categories: Iterable[str], backbone: Mapping[str, Any], tuned: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """How many channels each category's shallow stage gives: its ``tuned`` network's, else the
    run's ``backbone`` (known without weights: :func:`~fedpatchcore.core.features.backbones.stage_channels`)."""
    shallow = {}
    for category, setting in tuned_settings.category_settings(categories, backbone, {}, {}, tuned).items():
        name, layers = (backbone["name"], backbone.get("layers")) if setting is None else (setting.backbone, setting.layers)
        shallow[category] = stage_channels(name, layers)[0]
    return shallow


def image_batches(features: SiteFeatures, images_per_batch: int = IMAGES_PER_BATCH) -> Iterator[np.ndarray]:
    """The file's rows as ``(B, h, w, d)`` float32 batches, image by image."""
    h, w = features.grid
    for chunk in features.file.iter_chunks(rows_per_chunk=h * w * images_per_batch):
        yield chunk.reshape(-1, h, w, chunk.shape[-1])


def message_nbytes(message: Mapping[str, np.ndarray]) -> int:
    """Bytes of a message's arrays as sent (their own dtype)."""
    return int(sum(np.asarray(value).nbytes for value in message.values()))


def traffic(
    statistics: Mapping[str, Mapping[str, np.ndarray]],
    replies: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
    broadcasts: Sequence[Mapping[str, np.ndarray]],
) -> dict:
    """What fitting the experts sent: each site's statistics and k-means replies (up; ``replies``:
    per round, site -> reply) and every round's broadcast to each site (down). JSON-ready."""
    uploaded = {site: message_nbytes(message) for site, message in statistics.items()}
    for round_replies in replies:
        for site, reply in round_replies.items():
            uploaded[site] = uploaded.get(site, 0) + message_nbytes(reply)
    return {
        "uploaded_bytes": int(sum(uploaded.values())),
        "broadcast_bytes": int(sum(message_nbytes(b) * len(statistics) for b in broadcasts)),
        "statistics_bytes": int(sum(message_nbytes(m) for m in statistics.values())),
        "kmeans_rounds": [
            {"round": r, "uploaded_bytes": int(sum(message_nbytes(m) for m in round_replies.values()))}
            for r, round_replies in enumerate(replies, 1)
        ],
        "sites": {site: {"uploaded_bytes": int(b)} for site, b in uploaded.items()},
    }


# --------------------------------------------------------------------------------------------
# site side


def site_statistics(features: Mapping[str, SiteFeatures], settings: ExpertSettings) -> dict[str, np.ndarray]:
    """What a site sends beside its coreset: the Gaussian sums of each of its categories."""
    out: dict[str, np.ndarray] = {}
    for category, site_features in sorted(features.items()):
        out.update(
            category_statistics(image_batches(site_features), settings, site_features.shallow_dim).to_arrays(category)
        )
    return out


def site_round(
    features: Mapping[str, SiteFeatures], broadcast: Mapping[str, np.ndarray], settings: ExpertSettings
) -> dict[str, np.ndarray]:
    """A site's reply to one k-means round: per category it holds and per k, Lloyd and histogram sums.

    ``broadcast`` is the server's :meth:`ExpertFit.broadcast` (centroids of every category);
    categories the site does not hold are skipped.
    """
    out: dict[str, np.ndarray] = {}
    for category, site_features in sorted(features.items()):
        centroids = _centroids_of(broadcast, category)
        if not centroids:
            continue
        projections = Projections.of(
            int(broadcast[f"{category}/feature_dim"]), int(broadcast[f"{category}/shallow_dim"]), settings
        )
        lloyd = {k: None for k in centroids}
        hists = {k: MomentSums.zeros((), len(c)) for k, c in centroids.items()}
        for batch in image_batches(site_features):
            patches, _ = projections(batch)
            flat = patches.reshape(-1, patches.shape[-1])
            for k, c in centroids.items():
                step = lloyd_sums(flat, c)
                lloyd[k] = step if lloyd[k] is None else lloyd[k].merge(step)
                hists[k].add(histograms(patches, c))
        for k in centroids:
            out[f"{category}/k{k}/counts"] = lloyd[k].counts
            out[f"{category}/k{k}/sums"] = lloyd[k].sums
            out.update(hists[k].to_arrays(f"{category}/k{k}/histogram"))
    return out


def _centroids_of(message: Mapping[str, np.ndarray], category: str) -> dict[int, np.ndarray]:
    prefix = f"{category}/k"
    ks = sorted(int(key[len(prefix) :].split("/")[0]) for key in message if key.startswith(prefix) and key.endswith("/centroids"))
    return {k: np.asarray(message[f"{prefix}{k}/centroids"], dtype=np.float64) for k in ks}


# --------------------------------------------------------------------------------------------
# server side


@dataclass
class ExpertFit:
    """The server's state while it fits the experts (after :func:`start_fit`, each :func:`server_round`)."""

    settings: ExpertSettings
    statistics: dict[str, CategoryStatistics]  # merged Gaussian sums per category
    centroids: dict[str, dict[int, np.ndarray]]  # the centroids broadcast in the next round
    rounds_done: int = 0

    @property
    def rounds_left(self) -> int:
        """k-means rounds still to run (the last one only collects histograms)."""
        return self.settings.lloyd_rounds + 1 - self.rounds_done

    def projections(self, category: str) -> Projections:
        stats = self.statistics[category]
        return Projections.of(stats.feature_dim, stats.shallow_dim, self.settings)

    def broadcast(self) -> dict[str, np.ndarray]:
        """What every site receives for the next round: the centroids, and the feature layout they
        live in (the projections are public: every site derives them from the run's seed)."""
        out: dict[str, np.ndarray] = {}
        for category, by_k in sorted(self.centroids.items()):
            stats = self.statistics[category]
            out[f"{category}/feature_dim"] = np.asarray(stats.feature_dim, dtype=np.int64)
            out[f"{category}/shallow_dim"] = np.asarray(stats.shallow_dim, dtype=np.int64)
            for k, centroids in by_k.items():
                out[f"{category}/k{k}/centroids"] = centroids
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"rounds_done": np.asarray(self.rounds_done, dtype=np.int64), **self.broadcast()}
        for category, stats in sorted(self.statistics.items()):
            out.update(stats.to_arrays(f"{category}/statistics"))
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], settings: ExpertSettings) -> ExpertFit:
        categories = sorted({key.split("/")[0] for key in arrays if key.endswith("/statistics/feature_dim")})
        return cls(
            settings,
            {c: CategoryStatistics.from_arrays(arrays, f"{c}/statistics") for c in categories},
            {c: _centroids_of(arrays, c) for c in categories},
            int(arrays["rounds_done"]),
        )


def merge_statistics(messages: Sequence[Mapping[str, np.ndarray]]) -> dict[str, CategoryStatistics]:
    """The sums of every site's :func:`site_statistics` message, per category."""
    merged: dict[str, CategoryStatistics] = {}
    for message in messages:
        for category in sorted({key.split("/")[0] for key in message if key.endswith("/feature_dim")}):
            stats = CategoryStatistics.from_arrays(message, category)
            merged[category] = stats if category not in merged else merged[category].merge(stats)
    return merged


def start_fit(
    messages: Sequence[Mapping[str, np.ndarray]], bank: Mapping[str, np.ndarray], settings: ExpertSettings
) -> ExpertFit:
    """Merge the sites' Gaussian sums and start k-means of every category from its bank rows.

    ``bank``: category -> the rows of its memory bank (full dimension, as scored), which the
    server holds anyway; they are projected like every site's patches before k-center picks
    the starting centroids.
    """
    statistics = merge_statistics(messages)
    missing = sorted(set(statistics) - set(bank))
    if missing:
        raise ValueError(f"no memory-bank rows to start k-means from for categories {missing}")
    centroids = {}
    for category, stats in statistics.items():
        projections = Projections.of(stats.feature_dim, stats.shallow_dim, settings)
        rows, _ = projections(np.asarray(bank[category], dtype=np.float32)[:, None, None, :])
        rows = rows.reshape(len(rows), -1)
        centroids[category] = {k: initial_centroids(rows, k, settings.seed) for k in settings.clusters}
    return ExpertFit(settings, statistics, centroids)


def _replies(replies: Sequence[Mapping[str, np.ndarray]], category: str, k: int, size: int, dim: int):
    lloyd = LloydSums(np.zeros(size), np.zeros((size, dim)))
    hist = MomentSums.zeros((), size)
    for reply in replies:
        if f"{category}/k{k}/counts" not in reply:
            continue  # a site that does not hold this category
        lloyd = lloyd.merge(LloydSums(np.asarray(reply[f"{category}/k{k}/counts"], np.float64), np.asarray(reply[f"{category}/k{k}/sums"], np.float64)))
        hist = hist.merge(MomentSums.from_arrays(reply, f"{category}/k{k}/histogram"))
    return lloyd, hist


def server_round(fit: ExpertFit, replies: Sequence[Mapping[str, np.ndarray]]) -> ExpertFit:
    """Move every centroid to the mean of the patches all sites assigned to it."""
    if fit.rounds_left <= 1:
        raise ValueError("every k-means round has run: call finish() with the last replies")
    centroids = {}
    for category, by_k in fit.centroids.items():
        centroids[category] = {}
        for k, current in by_k.items():
            lloyd, _ = _replies(replies, category, k, *current.shape)
            centroids[category][k] = update_centroids(current, lloyd)
    return ExpertFit(fit.settings, fit.statistics, centroids, fit.rounds_done + 1)


def finish(fit: ExpertFit, replies: Sequence[Mapping[str, np.ndarray]]) -> dict[str, CategoryExperts]:
    """The fitted experts of every category, from the last round's histogram sums."""
    if fit.rounds_left != 1:
        raise ValueError(f"{fit.rounds_left - 1} k-means round(s) still to run before the experts can be fitted")
    experts = {}
    for category, stats in fit.statistics.items():
        global_ = fit_gaussian(stats.global_, fit.settings.ridge)
        position = fit_gaussian(stats.position, fit.settings.ridge)
        composition = {}
        for k, centroids in fit.centroids[category].items():
            _, hist = _replies(replies, category, k, *centroids.shape)
            composition[k] = fit_gaussian(hist, fit.settings.ridge)
        experts[category] = CategoryExperts(
            fit.projections(category),
            fit.settings.grid,
            fit.settings.shift,
            global_,
            position,
            dict(fit.centroids[category]),
            composition,
            stats.n_images,
        )
    return experts


def experts_to_arrays(experts: Mapping[str, CategoryExperts]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for category, model in sorted(experts.items()):
        out.update(model.to_arrays(category))
    return out


def experts_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, CategoryExperts]:
    categories = sorted({key.split("/")[0] for key in arrays if key.endswith("/grid") and key.count("/") == 1})
    return {category: CategoryExperts.from_arrays(arrays, category) for category in categories}
