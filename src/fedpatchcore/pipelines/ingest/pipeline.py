"""``ingest``: raw images -> ``dataset_index``, ``category_info``, ``skipped_files``, the validation
split and the evaluation index (the test images minus those label noise trains on)."""

from kedro.pipeline import Pipeline, node

from fedpatchcore.pipelines import bind
from fedpatchcore.pipelines.ingest import nodes


def validation_split(always: bool = False) -> Pipeline:
    """``validation_split``: the seeded validation split of the training images.

    Empty unless ``validation.enabled``; ``always``: split in any case (the tune pipeline).
    """
    function = bind(nodes.make_validation_split, always=True) if always else nodes.make_validation_split
    return Pipeline(
        [node(function, ["dataset_index", "params:validation", "params:seed"], "validation_split", name="split_validation")]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return (
        Pipeline(
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
            ]
        )
        + validation_split()
        + Pipeline(
            [
                node(
                    nodes.reserve_label_noise_images,
                    ["dataset_index", "params:variants", "params:seed"],
                    ["label_noise_pool", "evaluation_index"],
                    name="reserve_label_noise_images",
                ),
            ]
        )
    )
