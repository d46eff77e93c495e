"""The client lane, instantiated once per client with its own namespace."""

from kedro.pipeline import Pipeline, node, pipeline

from fedpatchcore.pipelines import bind
from fedpatchcore.pipelines.training import nodes

# Settings every client shares; inside a client namespace they stay global.
SHARED_PARAMETERS = {
    "params:backbone",
    "params:extraction",
    "params:coreset",
    "params:seed",
    "params:federation.client_coreset_ratios",
}
SHARED_INPUTS = {"dataset_index", "category_info"}


def client_lane(client_id: str) -> Pipeline:
    """What one factory does with its own images; nothing here knows about the others."""
    return Pipeline(
        [
            node(
                bind(nodes.extract_client_features, client_id=client_id),
                [
                    "partition",
                    "dataset_index",
                    "category_info",
                    "params:backbone",
                    "params:extraction",
                    "params:coreset",
                    "params:seed",
                ],
                "patch_features",
                name="extract_features",
            ),
            node(
                bind(nodes.select_local_coreset, client_id=client_id),
                [
                    "patch_features",
                    "params:coreset",
                    "params:federation.client_coreset_ratios",
                    "params:seed",
                ],
                "local_coreset",
                name="select_coreset",
            ),
        ]
    )


def client_lanes(variant: str, client_ids: list[str]) -> Pipeline:
    """One namespaced lane per client of a federated variant: ``<variant>.client_<id>.*``."""
    lanes = [
        pipeline(
            client_lane(client_id),
            namespace=f"{variant}.client_{client_id}",
            inputs={**{name: name for name in SHARED_INPUTS}, "partition": f"{variant}.partition"},
            parameters=SHARED_PARAMETERS,
        )
        for client_id in client_ids
    ]
    return sum(lanes, Pipeline([]))


def centralized_training() -> Pipeline:
    """The baseline: one client holding every training image; its coreset is the memory bank."""
    lane = Pipeline(
        [node(nodes.hold_all_training_images, "dataset_index", "partition", name="hold_all_training_images")]
    ) + client_lane(nodes.CENTRALIZED_CLIENT)
    return pipeline(
        lane,
        namespace="centralized",
        inputs=SHARED_INPUTS,
        outputs={"local_coreset": "centralized.memory_bank"},
        parameters=SHARED_PARAMETERS,
    )
