"""``privacy.mechanism: summary``: a variant's bank built by DP-Lloyd rounds over public centres.

    public images ──summary_public_centres──► summary_centres_round_1 (server, public)
    round r:  client_<id>: its own patch features + the broadcast centres
                  ──summary_share_round_<r>──► its sums + its share of the noise (round 1 first
                  charges the site's ledger for every round: privacy_budget)
              server: the sum of the shares (what SecAgg+ reveals) ──summary_round_<r>──►
                  summary_centres_round_<r+1> (the last round: memory_bank, centres + radii)

Thin calls of :mod:`fedpatchcore.core.privacy.release` (the site's shares) and
:mod:`fedpatchcore.core.privacy.summary` (the server's update). The in-process sum of the lanes
is the sum Flower's SecAgg+ gives the server (:mod:`fedpatchcore.flower.secure_summary`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from kedro.pipeline import Node, Pipeline, node

from fedpatchcore.core.banks import CategoryBanks, pack, unpack
from fedpatchcore.core.data.types import category_info_from_dict
from fedpatchcore.core.features.extraction import ExtractedFeatures, make_embedder
from fedpatchcore.core.federation.client import CLIENT_BLOCKS
from fedpatchcore.core.privacy.public import public_summary
from fedpatchcore.core.privacy.release import (
    PrivacySettings,
    charge_release,
    most_exposed,
    summary_share,
    summary_statistics,
)
from fedpatchcore.core.privacy.secure_sum import pooled_sum
from fedpatchcore.core.privacy.summary import Statistics, SummaryCategory, lloyd_update
from fedpatchcore.pipelines import bind, in_variant, node_with_parameters
from fedpatchcore.pipelines.federated.flower_pipeline import uses_flower
from fedpatchcore.structure import Variant

logger = logging.getLogger(__name__)


def uses_summary(variant: Variant) -> bool:
    return (variant.parameters.get("privacy") or {}).get("mechanism", "rows") == "summary"


def summary_rounds(parameters: Mapping[str, Any]) -> int:
    return int(((parameters.get("privacy") or {}).get("summary") or {}).get("rounds", 2))


# --------------------------------------------------------------------------- nodes


def _centres(arrays: Mapping[str, np.ndarray]) -> dict[str, SummaryCategory]:
    """The broadcast state of a round: every centre with its current radius and count."""
    parts = unpack(arrays, ("centre", "radius", "count"), "summary centres")
    return {
        c: SummaryCategory(np.asarray(v, dtype=np.float32), np.asarray(parts["radius"][c], np.float32), np.asarray(parts["count"][c]))
        for c, v in parts["centre"].items()
    }


def _held(partition_stats: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Client -> category -> its images (public: the counts clients report)."""
    return {
        cid: {c: int(n) for c, n in stats.get("categories", {}).items() if n}
        for cid, stats in partition_stats["clients"].items()
    }


def _holders(partition_stats: Mapping[str, Any]) -> dict[str, int]:
    """Category -> clients holding at least one of its images."""
    holders: dict[str, int] = {}
    for categories in _held(partition_stats).values():
        for category in categories:
            holders[category] = holders.get(category, 0) + 1
    return holders


def _images_per_category(partition_stats: Mapping[str, Any]) -> dict[str, int]:
    """Category -> images of all the clients holding it."""
    totals: dict[str, int] = {}
    for categories in _held(partition_stats).values():
        for category, count in categories.items():
            totals[category] = totals.get(category, 0) + count
    return totals


def summary_public_centres(
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    privacy: dict[str, Any],
    dataset: dict[str, Any],
    seed: int,
) -> dict[str, np.ndarray]:
    """Every category's starting centres and their public radii, from public images only."""
    settings = PrivacySettings.from_parameters(privacy, seed)
    embedder = make_embedder(backbone, extraction)
    drawn = None
    if dataset.get("format") == "synthetic":
        drawn = tuple((dataset.get("synthetic") or {}).get("image_size") or ()) or None
    centres, radius, count = {}, {}, {}
    for name, info in sorted(category_info.items()):
        public = public_summary(category_info_from_dict(info), embedder, settings, seed, drawn)
        centres[name], radius[name], count[name] = public.centres, public.radius, public.count
    logger.info("Summary: %s public centres per category", {c: len(v) for c, v in centres.items()})
    return pack(centre=centres, radius=radius, count=count)


def summary_share_round(
    patch_features: ExtractedFeatures,
    centres: dict[str, np.ndarray],
    partition_stats: dict[str, Any],
    privacy: dict[str, Any],
    seed: int,
    *,
    client_id: str,
    round_number: int,
):
    """A site's round: its sums around the broadcast centres plus its share of the noise.

    Round 1 first charges the site's ledger for all the rounds (refused past
    ``privacy.max_epsilon``) and also returns the site's privacy budget.
    """
    settings = PrivacySettings.from_parameters(privacy, seed)
    budget = None
    if round_number == 1:
        spent = charge_release(settings, client_id, patch_features.image_keys, f"client {client_id} summary")
        budget = settings.budget(patch_features.n_images, most_exposed(spent)) if settings.enabled else settings.budget()
    statistics = summary_statistics(
        patch_features.files,
        patch_features.n_images,
        patch_features.grid,
        {c: state.centres for c, state in _centres(centres).items()},
        settings,
    )
    clipped = {c: s.clipped for c, s in statistics.items()}
    logger.info("client %s: summary round %d, images clipped to B per category %s", client_id, round_number, clipped)
    shares = summary_share(
        statistics,
        settings,
        _holders(partition_stats),
        client_id=client_id,
        round_number=round_number,
        image_keys=patch_features.image_keys,
    )
    share = pack(share=shares, n_images={c: int(n) for c, n in patch_features.n_images.items()})
    return (share, budget) if round_number == 1 else share


def summary_server_round(
    centres: dict[str, np.ndarray],
    privacy: dict[str, Any],
    seed: int,
    *shares: dict[str, np.ndarray],
    client_ids: list[str],
    round_number: int,
    last: bool,
):
    """The server's round: sum the shares per category (all it sees) and move the centres.

    Returns the next round's centres, or (last round) the variant's memory bank: the kept
    centres with their radii; and the round's report.
    """
    settings = PrivacySettings.from_parameters(privacy, seed)
    current = _centres(centres)
    by_client = {cid: unpack(arrays, ("share", "n_images"), f"the summary share of client {cid}") for cid, arrays in zip(client_ids, shares, strict=True)}
    following, banks, radius, n_images, dropped, fallback = {}, {}, {}, {}, {}, []
    for category, state in sorted(current.items()):
        vectors = [parts["share"][category] for parts in by_client.values() if category in parts["share"]]
        if not vectors:
            continue
        pooled = Statistics.from_vector(pooled_sum(vectors), len(state.centres), state.centres.shape[1])
        following[category], bank = lloyd_update(state, pooled, settings.sigma, settings.summary)
        banks[category], radius[category] = bank.centres, bank.radius
        n_images[category] = int(sum(int(p["n_images"].get(category, 0)) for p in by_client.values()))
        dropped[category] = int(len(state.centres) - len(bank))
        if bank is following[category]:
            fallback.append(category)
            logger.warning(
                "Summary round %d, %s: no centre passed the noisy count threshold; the bank keeps every centre "
                "where it was with its previous radius",
                round_number,
                category,
            )
    report = {
        "round": int(round_number),
        "mechanism": "summary",
        "uploaded": {
            cid: {
                "rows": {},
                "bytes": int(sum(np.asarray(v).nbytes for v in parts["share"].values())),
                "n_images": {c: int(n) for c, n in parts["n_images"].items()},
                "numbers": {},
            }
            for cid, parts in by_client.items()
        },
        "uploaded_bytes": int(sum(np.asarray(v).nbytes for p in by_client.values() for v in p["share"].values())),
        "broadcast_bytes": int(sum(c.centres.nbytes for c in current.values()) * len(client_ids)),
        "rejected": [],
        "trust": {},
        "bank_rows": {c: int(len(b)) for c, b in banks.items()},
        "dropped_centres": dropped,
        "no_centre_passed": fallback,
        "sigma": settings.sigma,
    }
    logger.info("Summary round %d: centres kept per category %s (dropped %s)", round_number, report["bank_rows"], dropped)
    if not last:
        return pack(
            centre={c: s.centres for c, s in following.items()},
            radius={c: s.radius for c, s in following.items()},
            count={c: s.count for c, s in following.items()},
        ), report
    return CategoryBanks(banks, n_images, radius=radius).to_arrays(), report


def summary_public_bank(centres: dict[str, np.ndarray], partition_stats: dict[str, Any]):
    """``rounds: 0``: the public centres and radii are the bank (nothing private released)."""
    parts = unpack(centres, ("centre", "radius", "count"), "summary centres")
    n_images = _images_per_category(partition_stats)
    banks = {c: v for c, v in parts["centre"].items() if n_images.get(c)}
    report = {"round": 1, "mechanism": "summary", "uploaded": {}, "uploaded_bytes": 0, "broadcast_bytes": 0,
              "rejected": [], "trust": {}, "bank_rows": {c: int(len(b)) for c, b in banks.items()}}
    bank = CategoryBanks(banks, {c: n_images[c] for c in banks}, radius={c: parts["radius"][c] for c in banks})
    return bank.to_arrays(), report


def no_release_budget(privacy: dict[str, Any], seed: int) -> dict[str, Any]:
    """A site that released nothing (``rounds: 0``)."""
    return PrivacySettings.from_parameters(privacy, seed).budget()


def run_flower_summary(
    category_info: dict[str, Any],
    centres: dict[str, np.ndarray],
    partition_stats: dict[str, Any],
    *training_images,
    parameters: dict[str, Any],
    variant: str,
    client_ids: list[str],
    rounds: int,
):
    """``federation.engine: flower``: the rounds through Flower's simulation engine under SecAgg+.

    Every simulated SuperNode gets only its own training-image table; the server learns only
    the pooled sums. ``parameters``: the run's client blocks (each site reads its settings with
    ``ClientSettings.from_run``). Outputs the bank, each round's report and each site's budget.
    """
    from pathlib import Path

    from fedpatchcore.flower.secure_summary import SummaryPlan, remove_sites, simulate_summary, write_sites

    privacy, seed, federation = dict(parameters["privacy"]), int(parameters["seed"]), parameters["federation"]
    extraction = parameters["extraction"]
    if privacy.get("ledger_dir"):  # the simulated sites run elsewhere: give them the folder itself
        privacy["ledger_dir"] = str(Path(privacy["ledger_dir"]).resolve())
    parameters = {**parameters, "privacy": privacy}
    plan = SummaryPlan(
        tuple(client_ids), parameters, _centres(centres), _holders(partition_stats), _images_per_category(partition_stats)
    )
    folder = Path(extraction["scratch_dir"]).resolve() / "flower_summary" / variant
    try:
        result = simulate_summary(plan, write_sites(folder, client_ids, training_images, category_info), federation.get("flower") or {})
    finally:
        remove_sites(folder)
    settings = PrivacySettings.from_parameters(privacy, seed)
    held = _held(partition_stats)
    # Every site sends one vector of every category's sums (zeros where it holds none), masked.
    vector_bytes = int(sum(np.asarray(v).nbytes for v in result.released[0].values()))
    broadcast = int(sum(plan.start[c].centres.nbytes for c in plan.categories))
    reports = [
        {
            **report,
            "uploaded": {cid: {"rows": {}, "bytes": vector_bytes, "n_images": held[cid], "numbers": {}} for cid in client_ids},
            "uploaded_bytes": vector_bytes * len(client_ids),
            "broadcast_bytes": broadcast * len(client_ids),
            "rejected": [],
            "trust": {},
        }
        for report in result.reports
    ]
    outputs = [result.bank.to_arrays(), *reports]
    outputs += [settings.budget(held[cid]) if settings.enabled else settings.budget() for cid in client_ids]
    return tuple(outputs)


# --------------------------------------------------------------------------- the pipeline


def summary_federation(variant: Variant, extraction_node: Callable[[str], Node]) -> Pipeline:
    """Extraction lanes (shared with other variants where the images and settings match), the
    public centres, then the DP-Lloyd rounds: client shares and server updates.

    ``extraction_node``: the client lane's feature-extraction node for a client id (the training
    pipeline's builder, handed in by the federated variant that is made of it).
    """
    client_ids = variant.client_ids
    rounds = summary_rounds(variant.parameters)
    lanes = Pipeline([])
    for cid in client_ids:
        if variant.owns_features(cid):
            lanes += in_variant(
                Pipeline([extraction_node(cid)]),
                variant.name,
                namespace=f"{variant.name}.client_{cid}",
                inputs={
                    "category_info": "category_info",
                    "training_images": f"{variant.partition_owner}.client_{cid}.training_images",
                },
            )
    features = {f"client_{cid}_patch_features": f"{variant.feature_owner[cid]}.client_{cid}.patch_features" for cid in client_ids}
    stats = {"partition_stats": f"{variant.partition_owner}.partition_stats"}
    public = node(
        summary_public_centres,
        ["category_info", "params:backbone", "params:extraction", "params:privacy", "params:dataset", "params:seed"],
        "summary_centres_round_1",
        name="summary_public_centres",
    )
    steps = [public]
    budgets = {f"client_{cid}_privacy_budget": f"{variant.name}.client_{cid}.privacy_budget" for cid in client_ids}
    if uses_flower(variant) and rounds > 0:
        tables = {f"client_{cid}_training_images": f"{variant.partition_owner}.client_{cid}.training_images" for cid in client_ids}
        steps.append(
            node_with_parameters(
                run_flower_summary,
                ["category_info", "summary_centres_round_1", "partition_stats", *tables],
                CLIENT_BLOCKS,
                ["memory_bank", *(f"round_{r}_report" for r in range(1, rounds + 1)), *budgets],
                name="run_flower_summary",
                variant=variant.name,
                client_ids=client_ids,
                rounds=rounds,
            )
        )
        return in_variant(
            Pipeline(steps), variant.name, inputs={"category_info": "category_info", **stats, **tables}, outputs=budgets
        )
    if rounds == 0:
        steps.append(node(summary_public_bank, ["summary_centres_round_1", "partition_stats"], ["memory_bank", "round_1_report"], name="summary_public_bank"))
        steps += [node(no_release_budget, ["params:privacy", "params:seed"], f"client_{cid}_privacy_budget", name=f"client_{cid}_summary_budget") for cid in client_ids]
    shares_out = {}
    for r in range(1, rounds + 1):
        shares = [f"client_{cid}_summary_share_round_{r}" for cid in client_ids]
        shares_out.update({s: f"{variant.name}.client_{cid}.summary_share_round_{r}" for s, cid in zip(shares, client_ids, strict=True)})
        for cid, share in zip(client_ids, shares, strict=True):
            outputs = [share, f"client_{cid}_privacy_budget"] if r == 1 else share
            steps.append(
                node(
                    bind(summary_share_round, client_id=cid, round_number=r),
                    [f"client_{cid}_patch_features", f"summary_centres_round_{r}", "partition_stats", "params:privacy", "params:seed"],
                    outputs,
                    name=f"client_{cid}_summary_share_round_{r}",
                )
            )
        last = r == rounds
        steps.append(
            node(
                bind(summary_server_round, client_ids=client_ids, round_number=r, last=last),
                [f"summary_centres_round_{r}", "params:privacy", "params:seed", *shares],
                ["memory_bank" if last else f"summary_centres_round_{r + 1}", f"round_{r}_report"],
                name=f"summary_round_{r}",
            )
        )
    rounds_pipeline = in_variant(
        Pipeline(steps),
        variant.name,
        inputs={"category_info": "category_info", **(features if rounds else {}), **stats},
        outputs={**budgets, **shares_out},
    )
    return lanes + rounds_pipeline
