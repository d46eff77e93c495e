"""Bad input as a new user meets it, in a project where nothing has run yet: each stops early with
a message that names the parameter, the file or the run to do first, and ``kedro run`` prints
that message alone (exit code 1) instead of a traceback.

Nothing in this module trains: every test relies on the throwaway project being empty.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedpatchcore.hooks import MissingInputError
from fedpatchcore.params_schema import ParameterError

TRAIN_FIRST = (
    "Train first: kedro run --pipeline federated --params validation.enabled=true "
    "(with this run's dataset parameters), then run this again."
)


def _nothing_written(project: Path) -> bool:
    data = project / "data"
    written = [p for p in data.rglob("*") if p.is_file() and p.name != ".run.lock"] if data.exists() else []
    lock = data / ".run.lock"
    return not written and (not lock.exists() or lock.read_text() == "")


@pytest.mark.slow
def test_predict_before_any_training_names_the_run_that_makes_its_bank(kedro_project):
    # It used to end in a 180-line traceback: "DatasetError: federated.memory_bank: Did not find any versions".
    with pytest.raises(MissingInputError) as caught:
        kedro_project.run({"predict": {"input": str(kedro_project.path)}}, pipeline_names=["predict"])
    message = str(caught.value)
    assert message.startswith("`kedro run --pipeline predict` reads saved results that no run has written yet: ")
    assert "federated.memory_bank" in message and message.endswith(TRAIN_FIRST)
    assert _nothing_written(kedro_project.path)


@pytest.mark.slow
def test_explaining_with_the_centralized_bank_before_training_names_the_centralized_run(kedro_project):
    params = {"explain": {"image": "x.png", "variant": "centralized"}}
    with pytest.raises(MissingInputError, match=r"Train first: kedro run --pipeline centralized \(with"):
        kedro_project.run(params, pipeline_names=["explain"])


@pytest.mark.slow
def test_a_synthetic_root_that_is_a_file_stops_the_run_naming_dataset_root(kedro_project, tmp_path):
    # It used to end in a raw "FileExistsError: [Errno 17] File exists".
    root = tmp_path / "synthetic"
    root.write_text("a file")
    with pytest.raises(ParameterError) as caught:
        kedro_project.run({"dataset": {"root": str(root)}}, pipeline_names=["ingest"])
    assert caught.value.problems == [
        f"dataset.root: {root} is a file: the synthetic dataset is written into a folder (a new one is created)"
    ]
    assert _nothing_written(kedro_project.path)


def _kedro_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    kedro = shutil.which("kedro", path=str(Path(sys.executable).parent)) or "kedro"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [kedro, "run", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_kedro_run_prints_a_bad_input_alone_and_exits_non_zero(kedro_project):
    # A ParameterError used to print inside a ~150-line traceback.
    result = _kedro_run(kedro_project.path, "--pipeline", "ingest", "--params", "coreset.ratio=1.5")
    assert result.returncode == 1
    assert result.stderr == (
        "Invalid parameters (fix them in conf/<env>/parameters*.yml or the --params of this run):\n"
        "  - coreset.ratio: Input should be less than or equal to 1 (got 1.5)\n"
    )
    assert "Traceback" not in result.stdout + result.stderr

    result = _kedro_run(kedro_project.path, "--pipeline", "predict", "--params", "predict.input=anywhere")
    assert result.returncode == 1
    assert result.stderr.startswith("`kedro run --pipeline predict` reads saved results")
    assert result.stderr.endswith(TRAIN_FIRST + "\n") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert _nothing_written(kedro_project.path)
