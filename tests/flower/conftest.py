"""The pipeline tests' tiny dataset and throwaway Kedro project, for the Flower tests too."""

from tests.pipelines.conftest import kedro_project, tiny_dataset  # noqa: F401
