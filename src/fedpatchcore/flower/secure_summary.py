"""A summary bank's DP-Lloyd rounds through Flower with secure aggregation (SecAgg+).

Each site runs a ClientApp with Flower's ``secaggplus_mod``: in a round it receives the
current centres, computes its sums around them and adds its share of the noise
(:func:`fedpatchcore.core.privacy.release.summary_share`: σ²/(n − t) for the n clients of a
category), and answers with one vector: every category's sums side by side (zeros where it
holds none), scaled into [-1, 1] by a public bound (:func:`~fedpatchcore.core.privacy.
secure_sum.scale_for`). ``secaggplus_mod`` masks and quantises it; the ServerApp's
``SecAggPlusWorkflow`` (inside Flower's ``DefaultWorkflow`` with a ``LegacyContext``, as in
Flower's own secure-aggregation example) unmasks only the mean of the clients' vectors, which
the strategy turns back into the pooled sums and moves the centres with
:func:`~fedpatchcore.core.privacy.summary.lloyd_update`, the in-process server's update. The
server never sees one client's sums; what it sees is what the in-process lanes' sum is, up to
the quantisation of SecAgg+ (``privacy.secure_aggregation.quantization_bits``).

Assumptions (:mod:`fedpatchcore.core.privacy.secure_sum`): an honest-but-curious server, at
most ``max_dropouts`` clients of a category dropping out of a round, no collusion of the
server with the other clients of a category. Each site charges its own ledger before its
first round (``privacy.ledger_dir`` on that site).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.features.extraction import ExtractedFeatures, make_embedder
from fedpatchcore.core.federation import client
from fedpatchcore.core.privacy.release import (
    PrivacySettings,
    charge_release,
    summary_share,
    summary_statistics,
)
from fedpatchcore.core.privacy.secure_sum import scale_for, share_sigma
from fedpatchcore.core.privacy.summary import Statistics, SummaryCategory, lloyd_update, vector_length
from fedpatchcore.flower import site as sites
from fedpatchcore.flower.simulation import OFFLINE_ENVIRONMENT, backend_config

logger = logging.getLogger(__name__)

ROUND = "round"


@dataclass(frozen=True)
class SummaryPlan:
    """What the server and every site know in public: categories, shapes, holders, image counts."""

    client_ids: tuple[str, ...]
    parameters: Mapping[str, Any] = field(repr=False)  # the blocks a site needs: backbone, extraction, privacy, seed ...
    start: Mapping[str, SummaryCategory] = field(repr=False)  # the public centres of every category
    holders: Mapping[str, int] = field(default_factory=dict)  # category -> clients holding it
    n_images: Mapping[str, int] = field(default_factory=dict)  # category -> images of all its clients

    @property
    def categories(self) -> list[str]:
        return sorted(c for c in self.start if self.holders.get(c))

    @property
    def settings(self) -> PrivacySettings:
        return PrivacySettings.from_parameters(self.parameters.get("privacy"), int(self.parameters["seed"]))

    def dim(self) -> int:
        return int(next(iter(self.start.values())).centres.shape[1])

    def scales(self) -> dict[str, float]:
        """The public bound that maps each category's sums into SecAgg+'s [-1, 1]."""
        settings = self.settings
        return {
            c: scale_for(
                self.n_images[c],
                settings.summary.contribution_clip,
                share_sigma(settings.sigma, self.holders[c], settings.secure_aggregation.max_dropouts),
            )
            for c in self.categories
        }

    def pack(self, vectors: Mapping[str, np.ndarray]) -> np.ndarray:
        """A site's per-category vectors side by side, each divided by its public scale."""
        scales, k, dim = self.scales(), len(next(iter(self.start.values())).centres), self.dim()
        return np.concatenate(
            [
                np.asarray(vectors[c], np.float64) / scales[c] if c in vectors else np.zeros(vector_length(k, dim))
                for c in self.categories
            ]
        )

    def unpack(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        scales, k, dim = self.scales(), len(next(iter(self.start.values())).centres), self.dim()
        size = vector_length(k, dim)
        return {c: np.asarray(vector[i * size : (i + 1) * size], np.float64) * scales[c] for i, c in enumerate(self.categories)}


@dataclass
class SummaryResult:
    bank: CategoryBanks
    released: list[dict[str, np.ndarray]]  # per round: category -> the pooled sums the server learnt
    reports: list[dict[str, Any]]


# --------------------------------------------------------------------------- the site


_FEATURES: dict[str, ExtractedFeatures] = {}  # per process: a site extracts its images once per run


def _site_features(site: sites.Site, parameters: Mapping[str, Any]) -> ExtractedFeatures:
    key = sites.local_coreset_key(site, parameters)
    if key not in _FEATURES:
        settings = client.ClientSettings.from_run(parameters, site.client_id)
        site.scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=f"flower_summary_{site.client_id}_", dir=site.scratch_dir)
        embedder = make_embedder(parameters["backbone"], parameters["extraction"])
        _FEATURES[key], _ = client.extract_features(site.samples, site.infos, embedder, scratch, settings)
    return _FEATURES[key]


def site_round(site: sites.Site, plan: SummaryPlan, centres: Mapping[str, np.ndarray], round_number: int) -> np.ndarray:
    """What a site sends in a round: its packed sums plus its noise share (charged in round 1)."""
    settings = plan.settings
    features = _site_features(site, plan.parameters)
    if round_number == 1:
        charge_release(settings, site.client_id, features.image_keys, f"client {site.client_id} summary (Flower)")
    statistics = summary_statistics(features.files, features.n_images, features.grid, centres, settings)
    shares = summary_share(
        statistics,
        settings,
        plan.holders,
        client_id=site.client_id,
        round_number=round_number,
        image_keys=features.image_keys,
    )
    return plan.pack(shares)


def make_client_app(plan: SummaryPlan, node_configs: Mapping[int, Mapping[str, Any]]):
    """A ClientApp with ``secaggplus_mod`` whose simulated node ``i`` is the site of ``node_configs[i]``."""
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod

    class SummaryClient(NumPyClient):
        def __init__(self, site: sites.Site) -> None:
            self.site = site

        def fit(self, parameters, config):
            centres = dict(zip(plan.categories, parameters, strict=True))
            vector = site_round(self.site, plan, centres, int(config[ROUND]))
            # One example each: SecAgg+ returns the plain mean of the vectors (the strategy multiplies back).
            return [vector], 1, {}

    def client_fn(context):
        config = node_configs[int(context.node_config["partition-id"])]
        site = sites.site_from_table(
            str(config["client-id"]), config["training-images"], config["category-info"], config.get("scratch-dir")
        )
        return SummaryClient(site).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


# --------------------------------------------------------------------------- the server


def make_strategy(plan: SummaryPlan, outcome: dict[str, Any]):
    """FedAvg whose aggregate is SecAgg+'s mean: back to pooled sums, then the DP-Lloyd update."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    settings = plan.settings
    n = len(plan.client_ids)
    state = {c: plan.start[c] for c in plan.categories}
    outcome.update(released=[], reports=[], banks={})

    class SummaryStrategy(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            if failures:
                logger.warning("Summary round %d: %d client(s) failed or dropped out", server_round, len(failures))
            aggregated, _ = super().aggregate_fit(server_round, results, failures)
            mean = parameters_to_ndarrays(aggregated)[0]
            pooled = plan.unpack(mean * len(results))  # SecAgg+ gave the mean of the active clients' vectors
            outcome["released"].append(pooled)
            kept = {}
            for category, vector in pooled.items():
                current = state[category]
                stats = Statistics.from_vector(vector, len(current.centres), current.centres.shape[1])
                state[category], bank = lloyd_update(current, stats, settings.sigma, settings.summary)
                outcome["banks"][category] = bank
                kept[category] = len(bank)
            outcome["reports"].append(
                {"round": int(server_round), "mechanism": "summary", "secure_aggregation": "SecAgg+",
                 "replies": len(results), "failures": len(failures), "bank_rows": kept, "sigma": settings.sigma}
            )
            return ndarrays_to_parameters([state[c].centres for c in plan.categories]), {}

    return SummaryStrategy(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters([state[c].centres for c in plan.categories]),
        on_fit_config_fn=lambda server_round: {ROUND: int(server_round)},
        accept_failures=True,
    )


def simulate_summary(plan: SummaryPlan, node_configs: Sequence[Mapping[str, Any]], flower: Mapping[str, Any]) -> SummaryResult:
    """The rounds on Flower's simulation engine, one SuperNode per site, SecAgg+ in between."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    settings = plan.settings
    rounds = settings.summary.rounds
    if rounds < 1:
        raise ValueError("privacy.summary.rounds: 0 releases nothing; there is nothing to aggregate securely")
    secure = settings.secure_aggregation
    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        try:
            legacy = LegacyContext(
                context=context, config=ServerConfig(num_rounds=rounds), strategy=make_strategy(plan, outcome)
            )
            workflow = SecAggPlusWorkflow(
                num_shares=secure.num_shares,
                reconstruction_threshold=secure.reconstruction_threshold,
                max_weight=1.0,
                clipping_range=1.0,
                quantization_range=2**secure.quantization_bits,
            )
            DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
        except BaseException as exc:  # re-raised below, outside Flower's threads
            outcome["error"] = exc

    run_simulation(
        server_app,
        make_client_app(plan, dict(enumerate(node_configs))),
        num_supernodes=len(node_configs),
        backend_config=backend_config(flower),
    )
    if "error" in outcome:
        raise outcome["error"]
    if len(outcome.get("released", [])) != rounds:
        raise RuntimeError(f"the secure summary ended after {len(outcome.get('released', []))} of {rounds} rounds")
    banks = outcome["banks"]
    bank = CategoryBanks(
        {c: b.centres for c, b in banks.items()},
        {c: int(plan.n_images[c]) for c in banks},
        radius={c: b.radius for c, b in banks.items()},
    )
    return SummaryResult(bank, outcome["released"], outcome["reports"])


def write_sites(folder: Path, client_ids: Sequence[str], tables: Sequence[Any], category_info: Mapping[str, Any]) -> list[dict]:
    """Each site's node config: its own training-image table and the category facts (files)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "category_info.json").write_text(json.dumps(dict(category_info)))
    configs = []
    for client_id, table in zip(client_ids, tables, strict=True):
        path = folder / f"{client_id}_training_images.csv"
        table.to_csv(path, index=False)
        configs.append(
            {
                "client-id": str(client_id),
                "training-images": str(path),
                "category-info": str(folder / "category_info.json"),
                "scratch-dir": str(folder / "scratch"),
            }
        )
    return configs


def remove_sites(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
