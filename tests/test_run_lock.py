"""One run at a time per project data/ folder (case 1 of issue 9).

Two runs in one project folder used to both exit 0 while the first published metrics of the
second run's dataset. The lock makes the second run fail at once, naming the first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedpatchcore.run_lock import RunLock, RunLockedError, lock_path_for

REPO_ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import signal, sys, time
from fedpatchcore.run_lock import RunLock
# Ctrl-C must raise KeyboardInterrupt even when this test runs in a background job (a shell
# starts those with SIGINT ignored, and the holder would inherit that).
signal.signal(signal.SIGINT, signal.default_int_handler)
RunLock(sys.argv[1], command="holder --test", run_id="run-A").acquire()
print("held", flush=True)
time.sleep(60)
"""


def _holder(lock_path: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_lock_path_is_inside_the_project_data_folder(tmp_path):
    assert lock_path_for(tmp_path) == tmp_path / "data" / ".run.lock"


def test_acquire_records_the_holder_and_release_clears_it(tmp_path):
    path = lock_path_for(tmp_path)
    with RunLock(path, command="kedro run", run_id="r1") as lock:
        assert lock.held
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["command"] == "kedro run" and record["run_id"] == "r1"
        assert {"host", "started"} <= set(record)
    assert not lock.held and path.read_text() == ""
    lock.release()  # idempotent


def test_a_second_process_is_refused_with_the_holders_details(tmp_path):
    path = lock_path_for(tmp_path)
    holder = _holder(path)
    try:
        with pytest.raises(RunLockedError) as caught:
            RunLock(path).acquire()
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and "holder --test" in message and "run-A" in message
        assert "Wait for that run to finish" in message and "separate copy of the project" in message
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    path = lock_path_for(tmp_path)
    holder = _holder(path)
    holder.kill()  # SIGKILL: no clean-up runs, the record stays in the file
    holder.wait()
    assert json.loads(path.read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="fedpatchcore.run_lock"), RunLock(path) as lock:
        assert lock.held
    assert f"stale run lock {path} left by pid {holder.pid}" in caplog.text
    assert "(no longer running)" in caplog.text


def test_ctrl_c_releases_the_lock_and_clears_its_record(tmp_path, caplog):
    path = lock_path_for(tmp_path)
    holder = _holder(path)
    holder.send_signal(signal.SIGINT)  # KeyboardInterrupt: the interpreter exits normally
    holder.wait(timeout=30)
    assert path.read_text() == ""
    with caplog.at_level(logging.WARNING, logger="fedpatchcore.run_lock"), RunLock(path):
        pass
    assert "stale" not in caplog.text


def test_a_lock_left_by_an_interrupted_run_of_this_process_is_taken_over(tmp_path, caplog):
    path = lock_path_for(tmp_path)
    first = RunLock(path, run_id="interrupted").acquire()
    with caplog.at_level(logging.WARNING, logger="fedpatchcore.run_lock"):
        second = RunLock(path, run_id="next").acquire()
    assert second.held and not first.held
    assert "interrupted" in caplog.text
    second.release()


# --- two real `kedro run` processes ---------------------------------------------------------


def _tiny_project(path: Path) -> Path:
    """The repo's conf in a throwaway project, with small synthetic images (complete blocks)."""
    path.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "pyproject.toml", path / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "conf", path / "conf", ignore=shutil.ignore_patterns("local"))
    (path / "conf" / "local").mkdir()
    (path / "src").mkdir()
    base = {}
    for file in sorted((path / "conf" / "base").glob("parameters*.yml")):
        base.update(yaml.safe_load(file.read_text()))
    tiny = {
        "dataset": {
            **base["dataset"],
            "synthetic": {
                "image_size": [64, 64],
                "n_train": 6,
                "n_test_good": 2,
                "n_test_per_defect": 1,
            },
        },
        "extraction": {**base["extraction"], "num_threads": 1, "num_workers": 1},
        "comparison": {**base["comparison"], "enabled": False},
    }
    (path / "conf" / "tiny").mkdir()
    (path / "conf" / "tiny" / "parameters.yml").write_text(yaml.safe_dump(tiny))
    return path


def _one_category_dataset(root: Path) -> Path:
    from fedpatchcore.core.data.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(
        root,
        seed=3,
        image_size=(64, 64),
        n_train=4,
        n_test_good=2,
        n_test_per_defect=1,
        categories=["metal_plate"],
    )
    return root


def _latest(folder: Path) -> dict:
    return json.loads((sorted(folder.iterdir())[-1] / folder.name).read_text())


@pytest.mark.slow
def test_two_kedro_runs_at_once_never_mix_their_results(tmp_path):
    project = _tiny_project(tmp_path / "project")
    other_dataset = _one_category_dataset(tmp_path / "tiny_mvtec")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    commands = {
        "synthetic": ["kedro", "run", "--env", "tiny", "--pipeline", "centralized"],
        "mvtec": [
            "kedro",
            "run",
            "--env",
            "tiny",
            "--pipeline",
            "centralized",
            "--params",
            f"dataset.format=mvtec,dataset.root={other_dataset}",
        ],
    }
    kedro = shutil.which("kedro", path=str(Path(sys.executable).parent)) or "kedro"
    started = time.monotonic()
    # Both start at once from a clean data/ (the worst case: both used to crash and
    # leave a half-written synthetic set). Whichever takes the lock first runs to the end.
    processes = {
        name: subprocess.Popen(
            [kedro, *command[1:]],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, command in commands.items()
    }
    outputs = {name: process.communicate(timeout=300)[0] for name, process in processes.items()}
    codes = {name: process.returncode for name, process in processes.items()}
    assert sorted(codes.values()) == [0, 1], (codes, {n: o[-3000:] for n, o in outputs.items()})
    winner = next(name for name, code in codes.items() if code == 0)
    loser = next(name for name in codes if name != winner)
    refused = " ".join(outputs[loser].split())
    assert "RunLockedError: Another Kedro run is using this project's data folder" in refused, refused[-3000:]
    assert "command: kedro run --env tiny --pipeline centralized" in refused
    assert "Running node" not in outputs[loser]  # refused before its first node

    metrics = _latest(project / "data" / "08_reporting" / "metrics_centralized.json")
    index = (project / "data" / "02_intermediate" / "dataset_index.csv").read_text()
    if winner == "synthetic":
        assert set(metrics["categories"]) == {"metal_plate", "woven_fabric", "circuit_board", "parts_tray", "assembly"}
        manifest = json.loads((project / "data/01_raw/synthetic/synthetic_manifest.json").read_text())
        assert manifest["complete"]
        assert str(other_dataset) not in index
    else:
        assert set(metrics["categories"]) == {"metal_plate"}
        assert str(other_dataset) in index
    assert len(list((project / "data/08_reporting/metrics_centralized.json").iterdir())) == 1
    assert (project / "data" / ".run.lock").read_text() == ""  # released
    assert time.monotonic() - started < 300
