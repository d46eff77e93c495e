"""``tune``: ingest -> split_validation -> tune (every candidate on the validation split alone).

Outputs ``tune_table`` (data/08_reporting/tune.csv), ``tune_report`` (tune_report.md) and
``tuned_parameters`` (conf/tuned/parameters.yml: ``kedro run --env tuned`` applies it).
"""

from kedro.pipeline import Pipeline, node

from fedpatchcore.pipelines.ingest.pipeline import validation_split
from fedpatchcore.pipelines.tune import nodes


def create_pipeline(**kwargs) -> Pipeline:
    """Ingest's validation split, forced on (tuning needs one), then the tuner on it alone."""
    return validation_split(always=True) + Pipeline(
        [
            node(
                nodes.tune_settings,
                [
                    "dataset_index",
                    "validation_split",
                    "category_info",
                    "params:tune",
                    "params:backbone",
                    "params:extraction",
                    "params:coreset",
                    "params:scoring",
                    "params:seed",
                ],
                ["tune_table", "tune_report", "tuned_parameters"],
                name="tune",
            ),
        ]
    )
