"""Fitting the logical experts of a run: thin calls of :mod:`fedpatchcore.core.experts.fitting`.

A site (a federated client, or the centralized baseline's single client) measures Gaussian sums
of its own patch features and answers the server's k-means rounds; the server merges, moves the
centroids and finally fits the experts. Only sums cross from a site to the server.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.experts import fitting
from fedpatchcore.core.experts.model import ExpertSettings
from fedpatchcore.core.features.extraction import ExtractedFeatures


def _site(
    patch_features: ExtractedFeatures, backbone: dict[str, Any], tuned: dict[str, Any] | None = None
) -> dict[str, fitting.SiteFeatures]:
    """The site's feature file of each category, with how many channels its shallow stage gave
    (each category extracted with its own setting when ``tuned`` has one)."""
    return fitting.site_features(patch_features, fitting.shallow_channels(patch_features.files, backbone, tuned))


def measure_expert_statistics(
    patch_features: ExtractedFeatures,
    backbone: dict[str, Any],
    experts: dict[str, Any],
    seed: int,
    tuned: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """A site's Gaussian sums per category (what it sends beside its coreset)."""
    return fitting.site_statistics(_site(patch_features, backbone, tuned), ExpertSettings.from_parameters(experts, seed))


def start_expert_fit(
    memory_bank: dict[str, np.ndarray], experts: dict[str, Any], seed: int, *statistics: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Merge every site's sums; k-means starts from the memory bank's rows. Returns the server's
    state and what it broadcasts for the first k-means round."""
    settings = ExpertSettings.from_parameters(experts, seed)
    fit = fitting.start_fit(statistics, CategoryBanks.from_arrays(memory_bank).banks, settings)
    return fit.to_arrays(), fit.broadcast()


def answer_expert_round(
    patch_features: ExtractedFeatures, broadcast: dict[str, np.ndarray], experts: dict[str, Any], seed: int
) -> dict[str, np.ndarray]:
    """A site's reply to one k-means round: Lloyd and histogram sums of its own patches (the
    stages' split comes with the broadcast)."""
    return fitting.site_round(fitting.site_features(patch_features), broadcast, ExpertSettings.from_parameters(experts, seed))


def advance_expert_fit(
    expert_fit: dict[str, np.ndarray], experts: dict[str, Any], seed: int, *replies: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Move every centroid to the mean of what all sites assigned to it; the next broadcast."""
    settings = ExpertSettings.from_parameters(experts, seed)
    fit = fitting.server_round(fitting.ExpertFit.from_arrays(expert_fit, settings), replies)
    return fit.to_arrays(), fit.broadcast()


def finish_expert_fit(
    expert_fit: dict[str, np.ndarray], experts: dict[str, Any], seed: int, *replies: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The fitted experts of every category (``<variant>.expert_model``)."""
    settings = ExpertSettings.from_parameters(experts, seed)
    return fitting.experts_to_arrays(fitting.finish(fitting.ExpertFit.from_arrays(expert_fit, settings), replies))


def count_expert_traffic(
    *messages: dict[str, np.ndarray], sites: list[str], lloyd_rounds: int
) -> dict[str, Any]:
    """Bytes the experts' fitting sent (:func:`fitting.traffic`).

    ``messages``: per site its statistics, then for every round 1 .. lloyd_rounds + 1 each site's
    reply then that round's broadcast, in the order :func:`..pipeline.expert_fitting` lists them.
    """
    statistics, rest = dict(zip(sites, messages[: len(sites)], strict=True)), messages[len(sites) :]
    step = len(sites) + 1
    rounds = [rest[r * step : (r + 1) * step] for r in range(lloyd_rounds + 1)]
    return fitting.traffic(
        statistics, [dict(zip(sites, chunk[:-1], strict=True)) for chunk in rounds], [chunk[-1] for chunk in rounds]
    )
