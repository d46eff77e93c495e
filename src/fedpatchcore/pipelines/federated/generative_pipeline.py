"""``privacy.mechanism: dp_cvae``: the variant's clients train a DP conditional VAE together, the
server samples the memory bank from it.

    client lane:  patch_features ──prepare_generative_data──► generative_data, privacy_budget
    round r:      client_<id>_model_update_round_<r> (local DP-SGD from global_model_round_<r-1>)
                  ──average_model_round──► global_model_round_<r>, round_<r>_report
    after:        global_model_round_<R> ──sample_memory_bank──► memory_bank (+ bank_fidelity)

The lane's extraction is the rows lanes' own (shared with any variant extracting the same
images); rounds live in the variant's namespace, as the rows engine's later rounds do.
Evaluation and the published summary are unchanged; ``bank_fidelity`` (sliced Wasserstein and
MMD² of the samples to the clients' held-out real embeddings) joins the published metrics.
Nodes are thin calls of :mod:`fedpatchcore.core.federation.generative`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from kedro.pipeline import Node, Pipeline

from fedpatchcore.core.evaluation.fidelity import fidelity
from fedpatchcore.core.federation import generative as fed
from fedpatchcore.core.federation.client import CLIENT_BLOCKS
from fedpatchcore.core.federation.trust import TrustSettings
from fedpatchcore.core.privacy import generative as gen
from fedpatchcore.pipelines import in_variant, node_with_parameters
from fedpatchcore.structure import Variant


def is_generative(variant: Variant) -> bool:
    """Whether the variant's clients release a DP-CVAE (``privacy.mechanism: dp_cvae``)."""
    return fed.is_generative(variant.parameters)


def generative_rounds(variant: Variant) -> int:
    """The variant's DP-CVAE rounds (``privacy.dp_cvae.rounds``; ``federation.rounds`` are the rows engine's)."""
    return fed.cvae_settings(variant.parameters).rounds


# --------------------------------------------------------------------------- nodes


def prepare_generative_data(
    patch_features: Any, category_info: dict[str, Any], *, parameters: dict[str, Any], client_id: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The client's DP-CVAE training set (public positions, a held-out share) and what its
    training will spend over all rounds (its privacy budget, written before any round runs)."""
    settings = fed.GenerativeSettings.from_run(parameters, client_id)
    shape = fed.model_shape(fed.features_dim(patch_features), list(category_info), settings.cvae)
    data = fed.client_data(patch_features, shape, settings.cvae, settings.seed, settings.client_id)
    budget = fed.charge_training(settings, settings.plan(int((~data.holdout).sum())), patch_features.image_keys)
    return data.to_arrays(), budget


def train_model_round(
    generative_data: dict[str, np.ndarray],
    category_info: dict[str, Any],
    global_model: dict[str, np.ndarray] | None = None,
    *,
    parameters: dict[str, Any],
    client_id: str,
    round_number: int,
) -> dict[str, np.ndarray]:
    """Round ``round_number`` at the client: local DP-SGD from the broadcast model (round 1: the public initial one)."""
    settings = fed.GenerativeSettings.from_run(parameters, client_id)
    data = gen.GenerativeData.from_arrays(generative_data)
    shape = fed.model_shape(int(data.x.shape[-1]), list(category_info), settings.cvae)
    weights = None if global_model is None else gen.arrays_to_weights(global_model)
    return fed.client_round(data, shape, weights, settings, round_number).to_arrays()


def average_model_round(
    *updates_arrays: dict[str, np.ndarray], parameters: dict[str, Any], client_ids: list[str], round_number: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The server's round: FedAvg or trust-aware averaging of the clients' weights (``privacy.dp_cvae.averaging``)."""
    updates = [fed.ModelUpdate.from_arrays(cid, arrays) for cid, arrays in zip(client_ids, updates_arrays, strict=True)]
    trust = TrustSettings.from_parameters(parameters.get("trust"), int(parameters["seed"]))
    weights, report = fed.average_round(updates, fed.cvae_settings(parameters), trust, round_number)
    return gen.weights_to_arrays(weights), report


def sample_memory_bank(
    global_model: dict[str, np.ndarray],
    last_round_report: dict[str, Any],
    category_info: dict[str, Any],
    *,
    parameters: dict[str, Any],
) -> dict[str, np.ndarray]:
    """The memory bank: ``samples_per_category`` decoded vectors per category, k-center thinned."""
    bank, _ = fed.global_bank(gen.arrays_to_weights(global_model), list(category_info), last_round_report, parameters)
    return bank.to_arrays()


def measure_bank_fidelity(
    global_model: dict[str, np.ndarray],
    last_round_report: dict[str, Any],
    category_info: dict[str, Any],
    *generative_data: dict[str, np.ndarray],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """Sliced Wasserstein distance and MMD² of the decoder's samples to the clients' held-out real
    embeddings, per category and their mean (an experimenter's measure: no client sends these)."""
    cvae = fed.cvae_settings(parameters)
    _, samples = fed.global_bank(gen.arrays_to_weights(global_model), list(category_info), last_round_report, parameters)
    real = fed.held_out_embeddings([gen.GenerativeData.from_arrays(a) for a in generative_data], list(category_info), cvae)
    return fidelity(
        samples,
        real,
        n_projections=cvae.fidelity_projections,
        max_rows=cvae.fidelity_max_rows,
        seed=int(parameters["seed"]),
    )


def add_bank_fidelity(published_metrics: dict[str, Any], bank_fidelity: dict[str, Any]) -> dict[str, Any]:
    """The published metrics with ``fidelity`` and ``experiment.sliced_wasserstein`` / ``experiment.mmd2``
    (columns of an experiment's table)."""
    mean = bank_fidelity.get("mean", {})
    return {
        **published_metrics,
        "fidelity": dict(bank_fidelity),
        "experiment": {**published_metrics.get("experiment", {}), **mean},
    }


# --------------------------------------------------------------------------- pipeline


def generative_lane(variant: Variant, client_id: str, extraction_node: Callable[[str], Node]) -> Pipeline:
    """Client ``client_id``'s features (unless another variant extracts them) and DP-CVAE training set."""
    if not variant.owns_lane(client_id):
        return Pipeline([])
    prepare = node_with_parameters(
        prepare_generative_data,
        ["patch_features", "category_info"],
        CLIENT_BLOCKS,
        ["generative_data", "privacy_budget"],
        name="prepare_generative_data",
        client_id=client_id,
    )
    owner = variant.feature_owner[client_id]
    if owner == variant.name:
        template = Pipeline([extraction_node(client_id), prepare])
        inputs = {
            "category_info": "category_info",
            "training_images": f"{variant.partition_owner}.client_{client_id}.training_images",
        }
    else:
        template = Pipeline([prepare])
        inputs = {"category_info": "category_info", "patch_features": f"{owner}.client_{client_id}.patch_features"}
    return in_variant(template, variant.name, namespace=f"{variant.name}.client_{client_id}", inputs=inputs)


def _generative_data(variant: Variant) -> dict[str, str]:
    return {
        f"client_{cid}_generative_data": f"{variant.lane_owner[cid]}.client_{cid}.generative_data"
        for cid in variant.client_ids
    }


def generative_model_rounds(variant: Variant) -> Pipeline:
    """Every round: each client's local training, then the server's average."""
    client_ids, rounds = variant.client_ids, generative_rounds(variant)
    steps = []
    for r in range(1, rounds + 1):
        previous = [] if r == 1 else [f"global_model_round_{r - 1}"]
        steps += [
            node_with_parameters(
                train_model_round,
                [f"client_{cid}_generative_data", "category_info", *previous],
                CLIENT_BLOCKS,
                f"client_{cid}_model_update_round_{r}",
                name=f"client_{cid}_train_model_round_{r}",
                client_id=cid,
                round_number=r,
            )
            for cid in client_ids
        ]
        steps.append(
            node_with_parameters(
                average_model_round,
                [f"client_{cid}_model_update_round_{r}" for cid in client_ids],
                fed.SERVER_BLOCKS,
                [f"global_model_round_{r}", f"round_{r}_report"],
                name=f"average_model_round_{r}",
                client_ids=client_ids,
                round_number=r,
            )
        )
    final = [f"global_model_round_{rounds}", f"round_{rounds}_report", "category_info"]
    steps += [
        node_with_parameters(sample_memory_bank, final, fed.SERVER_BLOCKS, "memory_bank", name="sample_memory_bank"),
        node_with_parameters(
            measure_bank_fidelity,
            [*final, *_generative_data(variant)],
            fed.SERVER_BLOCKS,
            "bank_fidelity",
            name="measure_bank_fidelity",
        ),
    ]
    # Template names without dots, mapped onto the clients' namespaced datasets.
    updates = {
        f"client_{cid}_model_update_round_{r}": f"{variant.name}.client_{cid}.model_update_round_{r}"
        for cid in client_ids
        for r in range(1, rounds + 1)
    }
    return in_variant(
        Pipeline(steps),
        variant.name,
        inputs={"category_info": "category_info", **_generative_data(variant)},
        outputs=updates,
    )


def generative_federation(variant: Variant, extraction_node: Callable[[str], Node]) -> Pipeline:
    """The variant's DP-CVAE federation: the clients' lanes, the rounds, the sampled bank.

    ``extraction_node``: the client lane's feature-extraction node for a client id (the training
    pipeline's builder, handed in by the federated variant that is made of it).
    """
    lanes = sum((generative_lane(variant, cid, extraction_node) for cid in variant.client_ids), Pipeline([]))
    return lanes + generative_model_rounds(variant)
