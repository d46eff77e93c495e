"""``federation.engine: flower``: the variant's rounds through Flower's simulation engine.

The client lanes and the server-round nodes of the in-process engine are replaced by one node,
``<variant>.run_flower_federation``: it gives every simulated SuperNode only its own
training-image table (written for it from ``<partition owner>.client_<id>.training_images``),
runs the ServerApp's rounds (:func:`fedpatchcore.flower.rounds.serve`) and outputs the datasets
the in-process engine outputs -- ``<variant>.memory_bank``, ``global_bank_round_<r>``,
``round_<r>_report``, ``client_<id>.upload_round_<r>`` (what the server received), and with
``experts.enabled`` ``<variant>.expert_model`` and ``.expert_traffic`` -- plus
``<variant>.flower_traffic`` (bytes of the messages). Evaluation and the summary are unchanged.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.pipeline import Pipeline

from fedpatchcore.core.banks import ClientUpload
from fedpatchcore.core.experts.model import EXPERTS_BLOCK
from fedpatchcore.core.federation.client import CLIENT_BLOCKS, ClientSettings
from fedpatchcore.core.federation.server import SERVER_BLOCKS
from fedpatchcore.pipelines import in_variant, node_with_parameters
from fedpatchcore.structure import Variant, round_bank

logger = logging.getLogger(__name__)

ENGINES = ("inprocess", "flower")
# The federation runs both sides: the clients' blocks, the server's, the experts' (fitted by
# the same sites and server), the tuned per-category settings (each category extracted with
# its own network) and the dataset's (a site reads its folder the way the server reads its own).
FLOWER_BLOCKS = tuple(dict.fromkeys((*CLIENT_BLOCKS, *SERVER_BLOCKS, EXPERTS_BLOCK, "tuned", "dataset")))


def engine(variant: Variant) -> str:
    """The variant's ``federation.engine`` (``inprocess`` when unset)."""
    value = variant.federation.get("engine") or "inprocess"
    if value not in ENGINES:
        raise ValueError(f"federation.engine must be one of {list(ENGINES)} (variant {variant.name}), got {value!r}")
    return value


def uses_flower(variant: Variant) -> bool:
    return engine(variant) == "flower"


def _write_sites(
    folder: Path, client_ids: list[str], tables: tuple[pd.DataFrame, ...], category_info: dict[str, Any]
) -> list[dict[str, str]]:
    """One folder per simulated site holding only that client's table; its node config."""
    shutil.rmtree(folder, ignore_errors=True)
    configs = []
    for client_id, table in zip(client_ids, tables, strict=True):
        site = folder / f"client_{client_id}"
        site.mkdir(parents=True)
        table.to_csv(site / "training_images.csv", index=False)
        (site / "category_info.json").write_text(json.dumps(category_info), encoding="utf-8")
        configs.append(
            {
                "client-id": client_id,
                "training-images": str(site / "training_images.csv"),
                "category-info": str(site / "category_info.json"),
                "scratch-dir": str(site / "scratch"),
            }
        )
    return configs


def run_flower_federation(
    category_info: dict[str, Any],
    *training_images: pd.DataFrame,
    parameters: dict[str, Any],
    variant: str,
    client_ids: list[str],
    rounds: int,
) -> dict[str, Any]:
    """Every round of the variant through Flower's simulation engine; the in-process outputs."""
    from fedpatchcore.flower.rounds import FederationPlan
    from fedpatchcore.flower.simulation import simulate

    privacy = parameters.get("privacy") or {}
    if privacy.get("ledger_dir"):  # the simulated sites run in other processes: the folder itself
        parameters = {**parameters, "privacy": {**privacy, "ledger_dir": str(Path(privacy["ledger_dir"]).resolve())}}
    extraction = parameters["extraction"]
    plan = FederationPlan(variant, tuple(client_ids), rounds, parameters)
    folder = Path(extraction["scratch_dir"]) / "flower_sites" / variant
    try:
        result = simulate(plan, _write_sites(folder, client_ids, training_images, category_info))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    outputs: dict[str, Any] = {"flower_traffic": result.traffic_summary()}
    if result.expert_model is not None:
        outputs["expert_model"] = result.expert_model
        outputs["expert_traffic"] = result.expert_traffic
    for round_number, (bank, report, uploads) in enumerate(zip(result.banks, result.reports, result.uploads, strict=True), 1):
        outputs[round_bank(round_number, rounds)] = bank.to_arrays()
        outputs[f"round_{round_number}_report"] = report
        for client_id in client_ids:
            upload = uploads.get(client_id) or ClientUpload(client_id, {}, {})
            outputs[f"client_{client_id}_upload_round_{round_number}"] = upload.to_arrays()
    # What each site's release spent, as its Kedro lane would have written it (a function of the
    # run's privacy settings and the images behind its first upload).
    for client_id in client_ids:
        first = result.uploads[0].get(client_id) or ClientUpload(client_id, {}, {})
        privacy_settings = ClientSettings.from_run(parameters, client_id).privacy
        outputs[f"client_{client_id}_privacy_budget"] = privacy_settings.budget(
            first.n_images if privacy_settings.enabled else None
        )
    return outputs


def flower_federation(variant: Variant) -> Pipeline:
    """``<variant>.run_flower_federation``: the client lanes and server rounds in one Flower node."""
    client_ids = variant.client_ids
    tables = {f"client_{cid}_training_images": f"{variant.partition_owner}.client_{cid}.training_images" for cid in client_ids}
    outputs = ["flower_traffic"]
    if (variant.parameters.get("experts") or {}).get("enabled", False):
        outputs += ["expert_model", "expert_traffic"]
    # Template names without dots, mapped onto the clients' namespaced uploads.
    uploads = {}
    for round_number in range(1, variant.rounds + 1):
        outputs += [round_bank(round_number, variant.rounds), f"round_{round_number}_report"]
        for cid in client_ids:
            uploads[f"client_{cid}_upload_round_{round_number}"] = f"{variant.name}.client_{cid}.upload_round_{round_number}"
    for cid in client_ids:
        uploads[f"client_{cid}_privacy_budget"] = f"{variant.name}.client_{cid}.privacy_budget"
    outputs += list(uploads)
    template = Pipeline(
        [
            node_with_parameters(
                run_flower_federation,
                ["category_info", *tables],
                FLOWER_BLOCKS,
                {name: name for name in outputs},
                name="run_flower_federation",
                variant=variant.name,
                client_ids=client_ids,
                rounds=variant.rounds,
            )
        ]
    )
    return in_variant(template, variant.name, inputs={"category_info": "category_info", **tables}, outputs=uploads)
