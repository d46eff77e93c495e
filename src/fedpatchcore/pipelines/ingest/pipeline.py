from kedro.pipeline import Pipeline, node

from fedpatchcore.pipelines.federated import nodes as federated_nodes
from fedpatchcore.pipelines.ingest import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.prepare_raw_dataset,
                ["params:dataset", "params:seed"],
                "raw_dataset",
                name="prepare_raw_dataset",
            ),
            node(
                nodes.index_raw_dataset,
                ["raw_dataset", "params:dataset", "params:seed", "params:backbone"],
                ["dataset_index", "category_info", "skipped_files"],
                name="index_dataset",
            ),
            node(
                nodes.make_validation_split,
                ["dataset_index", "params:validation", "params:seed"],
                "validation_split",
                name="split_validation",
            ),
            node(
                federated_nodes.reserve_label_noise_images,
                ["dataset_index", "params:variants", "params:seed"],
                ["label_noise_pool", "evaluation_index"],
                name="reserve_label_noise_images",
            ),
        ]
    )
