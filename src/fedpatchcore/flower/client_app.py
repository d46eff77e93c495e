"""The ClientApp a factory site runs: its own images -> local coreset -> the round's upload.

Where a site's images are, from its SuperNode's node config:

* ``data-root`` (deployment): a dataset folder of that site, read with the project's readers
  (``dataset.format`` from the server; optional ``categories="a,b"`` restricts it);
* ``training-images`` + ``category-info`` (a table of the site's images and the category facts);
* only ``partition-id`` (``flwr run`` on the local simulation engine): the client at that position
  of the variant's partition, read from the project at run config ``project-path``.

``client-id`` names the site (default: the partition's id at ``partition-id``); ``scratch-dir``
is where features are streamed during a round (default: the system's temp folder).

The local coreset is kept in the node's context between rounds of a run, so round r > 1 only
compares it with the broadcast bank.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedpatchcore.core.federation.client import LocalCoreset
from fedpatchcore.flower import records
from fedpatchcore.flower import site as sites

logger = logging.getLogger(__name__)

DATA_ROOT = "data-root"
TRAINING_IMAGES = "training-images"
CATEGORY_INFO = "category-info"
CLIENT_ID = "client-id"
CATEGORIES = "categories"
SCRATCH_DIR = "scratch-dir"
PARTITION_ID = "partition-id"

_STATE_CORESET = "fedpatchcore.local_coreset"
_STATE_KEY = "fedpatchcore.local_coreset_key"
_STATE_EXPERTS = "fedpatchcore.expert_statistics"


def open_site(node_config: Mapping[str, Any], parameters: Mapping[str, Any], run_config: Mapping[str, Any]) -> sites.Site:
    """This node's site, from its node config (see the module docstring)."""
    scratch = node_config.get(SCRATCH_DIR)
    if DATA_ROOT in node_config:
        client_id = node_config.get(CLIENT_ID)
        if client_id is None:
            raise ValueError(f"a SuperNode with {DATA_ROOT} needs {CLIENT_ID} in --node-config")
        return sites.site_from_folder(
            str(client_id), str(node_config[DATA_ROOT]), parameters["dataset"], node_config.get(CATEGORIES, "all"), scratch
        )
    if TRAINING_IMAGES in node_config:
        return sites.site_from_table(
            str(node_config[CLIENT_ID]), node_config[TRAINING_IMAGES], node_config[CATEGORY_INFO], scratch
        )
    if PARTITION_ID in node_config:
        from fedpatchcore.flower.project import project_from_run_config

        project, variant = project_from_run_config(run_config)
        client_id = variant.client_ids[int(node_config[PARTITION_ID])]
        table = project.catalog.load(f"{variant.partition_owner}.client_{client_id}.training_images")
        return sites.site_from_frame(client_id, table, project.catalog.load("category_info"), scratch)
    raise ValueError(
        f"this SuperNode does not say where its images are: give --node-config \"{DATA_ROOT}='<folder>' "
        f"{CLIENT_ID}='<id>'\""
    )


def _local_coreset(
    site: sites.Site, parameters: Mapping[str, Any], context: Context
) -> tuple[LocalCoreset, dict | None]:
    """The site's local coreset (and, with experts, their statistics), built once per run."""
    key = sites.local_coreset_key(site, parameters)
    state = context.state
    if _STATE_KEY in state.config_records and state.config_records[_STATE_KEY].get("key") == key:
        local = LocalCoreset.from_arrays(records.record_to_arrays(state.array_records[_STATE_CORESET]))
        experts = state.array_records.get(_STATE_EXPERTS)
        return local, None if experts is None else records.record_to_arrays(experts)
    local, experts = sites.build_local_coreset(site, parameters)
    state[_STATE_CORESET] = records.arrays_to_record(local.to_arrays())
    if experts is not None:
        state[_STATE_EXPERTS] = records.arrays_to_record(experts)
    state[_STATE_KEY] = ConfigRecord({"key": key})
    return local, experts


def node_site(
    context: Context, parameters: Mapping[str, Any], node_configs: Mapping[int, Mapping[str, Any]] | None = None
) -> sites.Site:
    """This node's site: its node config, plus ``node_configs[partition id]`` in a simulation."""
    node_config = dict(context.node_config)
    if node_configs is not None and PARTITION_ID in node_config:
        node_config.update(node_configs[int(node_config[PARTITION_ID])])
    return open_site(node_config, parameters, context.run_config)


def answer(message: Message, context: Context, node_configs: Mapping[int, Mapping[str, Any]] | None = None) -> Message:
    """Reply to a round's instruction with this site's upload (``node_configs``: per partition id);
    to an experts' k-means round with its sums over the features it kept."""
    expert_round = records.read_expert_instruction(message.content)
    if expert_round is not None:
        number, parameters, broadcast = expert_round
        site = node_site(context, parameters, node_configs)
        reply = sites.expert_round_reply(sites.features_folder(site, parameters), broadcast, parameters)
        logger.info("client %s: experts' k-means round %d (%d bytes)", site.client_id, number, sum(v.nbytes for v in reply.values()))
        return Message(records.expert_reply(site.client_id, reply), reply_to=message)
    round_number, parameters, broadcast = records.read_instruction(message.content)
    site = node_site(context, parameters, node_configs)
    local, experts = _local_coreset(site, parameters, context)
    upload = sites.round_upload(local, site.client_id, parameters, broadcast)
    logger.info(
        "client %s: round %d upload of %d rows (%d bytes)",
        site.client_id,
        round_number,
        sum(len(b) for b in upload.banks.values()),
        upload.nbytes,
    )
    return Message(records.upload_reply(upload, experts if round_number == 1 else None), reply_to=message)


def make_client_app(
    node_configs: Mapping[int, Mapping[str, Any]] | None = None, mods: Sequence = ()
) -> ClientApp:
    """A ClientApp whose simulated node ``i`` also gets ``node_configs[i]`` (its own table ...)."""
    client_app = ClientApp(mods=list(mods))

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        from fedpatchcore.flower import generative

        if generative.is_model_round(message.content):  # privacy.mechanism: dp_cvae (a strategy's round)
            site = node_site(context, generative.round_parameters(message.content), node_configs)
            return generative.answer(message, context, site)
        return answer(message, context, node_configs)

    return client_app


# The app `flower-supernode` runs (flower_app/pyproject.toml: clientapp = "fedpatchcore.flower.client_app:app").
app = make_client_app()
