"""The client lane, instantiated once per client of a variant with its own namespace."""

from kedro.pipeline import Pipeline, node

from fedpatchcore.pipelines import bind, in_variant
from fedpatchcore.pipelines.training import nodes
from fedpatchcore.structure import CENTRALIZED, Variant

# What a client needs to know besides its images (ClientSettings.from_parameters).
CLIENT_SETTINGS = ["params:coreset", "params:federation", "params:extraction", "params:seed"]


def extraction_node(client_id: str):
    """Each category extracted with its ``params:tuned`` setting (else the run's blocks)."""
    return node(
        bind(nodes.extract_centralized_features, client_id=client_id),
        [
            "training_images",
            "category_info",
            "params:backbone",
            *CLIENT_SETTINGS,
            "params:heterogeneity",
            "params:tuned",
        ],
        ["patch_features", "heterogeneity_manifest"],
        name="extract_features",
    )


def coreset_node(client_id: str):
    return node(
        bind(nodes.select_local_coreset, client_id=client_id),
        ["patch_features", *CLIENT_SETTINGS, "params:fairness", "params:privacy"],
        ["local_coreset", "privacy_budget"],
        name="select_coreset",
    )


def upload_node(client_id: str):
    return node(
        bind(nodes.prepare_upload, client_id=client_id),
        ["local_coreset", *CLIENT_SETTINGS],
        "upload_round_1",
        name="prepare_upload_round_1",
    )


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


def centralized_training() -> Pipeline:
    """The baseline: one client holding every training image; its coreset is the memory bank.

    Like every client it reads ``params:tuned``: each category with a tuned entry is extracted
    with its own setting.
    """
    client_id = nodes.CENTRALIZED_CLIENT
    template = Pipeline(
        [
            node(
                nodes.hold_all_training_images,
                ["dataset_index", "params:validation", "params:seed", "params:dataset"],
                "training_images",
                name="hold_all_training_images",
            ),
            extraction_node(client_id),
            coreset_node(client_id),
            node(nodes.coreset_as_memory_bank, "local_coreset", "memory_bank", name="publish_memory_bank"),
        ]
    )
    return in_variant(template, CENTRALIZED, inputs={"dataset_index", "category_info"})
