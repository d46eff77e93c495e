"""The client lane, instantiated once per client of a variant with its own namespace.

Every client node reads the run's :data:`~fedpatchcore.core.federation.client.CLIENT_BLOCKS`
(``params:<block>``, mapped onto the variant's resolved parameters), and nothing else.
"""

from kedro.pipeline import Pipeline, node

from fedpatchcore.core.federation.client import CLIENT_BLOCKS
from fedpatchcore.pipelines import in_variant, node_with_parameters
from fedpatchcore.pipelines.training import nodes
from fedpatchcore.structure import CENTRALIZED, CENTRALIZED_CLIENT, Variant


def client_node(function, datasets: list[str], outputs, name: str, client_id: str):
    """A node of client ``client_id``: ``function(*datasets, parameters=<CLIENT_BLOCKS>, client_id=...)``."""
    return node_with_parameters(function, datasets, CLIENT_BLOCKS, outputs, name=name, client_id=client_id)


def extraction_node(client_id: str):
    """Each category extracted with its ``params:tuned`` setting (else the run's blocks)."""
    outputs = ["patch_features", "heterogeneity_manifest"]
    inputs = ["training_images", "category_info", "params:tuned"]
    return client_node(nodes.extract_client_features, inputs, outputs, "extract_features", client_id)


def coreset_node(client_id: str):
    outputs = ["local_coreset", "privacy_budget"]
    return client_node(nodes.select_local_coreset, ["patch_features"], outputs, "select_coreset", client_id)


def upload_node(client_id: str):
    return client_node(nodes.prepare_upload, ["local_coreset"], "upload_round_1", "prepare_upload_round_1", client_id)


def client_lane(variant: Variant, client_id: str) -> Pipeline:
    """What one factory does with its own images; nothing here sees another client's data.

    The lane reads only ``<partition owner>.client_<id>.training_images``. If an earlier variant
    already extracts the same images with the same settings, the lane reuses its features; if
    it also builds the same coreset, this variant has no lane for the client at all (its server
    reads the other variant's upload).
    """
    if not variant.owns_lane(client_id):
        return Pipeline([])
    namespace = f"{variant.name}.client_{client_id}"
    owner = variant.feature_owner[client_id]
    if owner == variant.name:
        template = Pipeline([extraction_node(client_id), coreset_node(client_id), upload_node(client_id)])
        inputs = {
            "category_info": "category_info",
            "training_images": f"{variant.partition_owner}.client_{client_id}.training_images",
        }
    else:
        template = Pipeline([coreset_node(client_id), upload_node(client_id)])
        inputs = {"patch_features": f"{owner}.client_{client_id}.patch_features"}
    return in_variant(template, variant.name, namespace=namespace, inputs=inputs)


def client_lanes(variant: Variant) -> Pipeline:
    """One namespaced lane per client of a federated variant: ``<variant>.client_<id>.*``."""
    return sum((client_lane(variant, cid) for cid in variant.client_ids), Pipeline([]))


def later_round_uploads(variant: Variant, round_number: int, previous_bank: str) -> Pipeline:
    """Round r > 1, every client of ``variant``: its local coreset's rows ``previous_bank`` misses.

    In the variant's namespace, not the client's: a client namespace spanning rounds would be
    cut in two by the server node between them. Outputs ``client_<id>_upload_round_<r>``.
    """
    steps = [
        client_node(
            nodes.prepare_later_upload,
            [f"client_{cid}_local_coreset", previous_bank],
            f"client_{cid}_upload_round_{round_number}",
            f"client_{cid}_prepare_upload_round_{round_number}",
            cid,
        )
        for cid in variant.client_ids
    ]
    # Template names without dots, mapped onto the clients' namespaced datasets (a lane's
    # datasets may belong to the variant that runs the shared lane).
    local_coresets = {
        f"client_{cid}_local_coreset": f"{variant.lane_owner[cid]}.client_{cid}.local_coreset" for cid in variant.client_ids
    }
    uploads = {
        f"client_{cid}_upload_round_{round_number}": f"{variant.name}.client_{cid}.upload_round_{round_number}"
        for cid in variant.client_ids
    }
    return in_variant(Pipeline(steps), variant.name, inputs=local_coresets, outputs=uploads)


def centralized_training() -> Pipeline:
    """The baseline: one client holding every training image; its coreset is the memory bank.

    Like every client it reads ``params:tuned``: each category with a tuned entry is extracted
    with its own setting.
    """
    template = Pipeline(
        [
            node(
                nodes.hold_all_training_images,
                ["dataset_index", "params:validation", "params:seed", "params:dataset"],
                "training_images",
                name="hold_all_training_images",
            ),
            extraction_node(CENTRALIZED_CLIENT),
            coreset_node(CENTRALIZED_CLIENT),
            node(nodes.coreset_as_memory_bank, "local_coreset", "memory_bank", name="publish_memory_bank"),
        ]
    )
    return in_variant(template, CENTRALIZED, inputs={"dataset_index", "category_info"})
