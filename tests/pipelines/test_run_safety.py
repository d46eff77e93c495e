"""Issue 9 through real Kedro sessions: stale indexes, checks before any node, skips, scratch, lock.

Every run happens in the throwaway project of conftest.py. Cases 1 (two processes) and 7 (no
tracked file changes) have their own modules: tests/test_run_lock.py, tests/test_clean_checkout.py.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from fedpatchcore.core.banks import bank_fingerprint
from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
from fedpatchcore.core.features.extraction import SCRATCH_MARKER
from fedpatchcore.params_schema import ParameterError

SCRATCH = Path("data/04_feature/.scratch")


def _latest(folder: Path) -> dict:
    return json.loads((sorted(folder.iterdir())[-1] / folder.name).read_text())


def _mvtec_dataset(root: Path) -> Path:
    """One category (metal_plate: 3 defect types) in a folder read as format=mvtec."""
    generate_synthetic_dataset(
        root,
        seed=5,
        image_size=(64, 64),
        n_train=4,
        n_test_good=3,
        n_test_per_defect=1,
        categories=["metal_plate"],
    )
    return root


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def first_run(kedro_project):
    return kedro_project.run(pipeline_names=["centralized"])


@pytest.mark.slow
def test_rescoring_after_a_new_coreset_uses_the_new_bank(kedro_project, first_run, caplog):
    # Case 2: a new bank without a new index (--to-nodes select_coreset, or a failure between
    # the two) used to be scored against the old index, silently.
    project = kedro_project.path
    # Other tests of this module run on other datasets (an MVTec-format folder): start from a
    # complete default run, so the cached features, index and bank below are all this dataset's.
    kedro_project.run(pipeline_names=["centralized"])
    # Only the coreset, from the cached features (the issue ran --to-nodes, which also re-extracts).
    kedro_project.run(
        {"coreset": {"ratio": 0.01}},
        pipeline_names=["centralized"],
        node_names=["centralized.select_coreset", "centralized.publish_memory_bank"],
    )
    _, catalog = first_run
    new_bank = catalog.load("centralized.memory_bank")  # the newest version: this run's
    stale = catalog.load("centralized.faiss_index")
    assert stale.bank_fingerprint != bank_fingerprint(new_bank)

    with caplog.at_level(logging.WARNING, logger="fedpatchcore.pipelines.evaluation.nodes"):
        kedro_project.run(
            {"coreset": {"ratio": 0.01}},
            pipeline_names=["centralized"],
            from_nodes=["centralized.score_test_images"],
        )
    assert "was built from another memory bank" in caplog.text and "rebuilding it in memory" in caplog.text
    maps_folder = project / "data/07_model_output/centralized/anomaly_maps"
    latest_maps = sorted(maps_folder.iterdir())[-1] / "anomaly_maps"
    for meta in latest_maps.glob("*.meta.json"):
        assert json.loads(meta.read_text())["bank_fingerprint"] == bank_fingerprint(new_bank)
    rescored = _latest(project / "data/08_reporting/metrics_centralized.json")

    # The same scores as with a properly rebuilt saved index.
    kedro_project.run(
        {"coreset": {"ratio": 0.01}},
        pipeline_names=["centralized"],
        from_nodes=["centralized.build_faiss_index"],
    )
    assert catalog.load("centralized.faiss_index").bank_fingerprint == bank_fingerprint(new_bank)
    rebuilt = _latest(project / "data/08_reporting/metrics_centralized.json")
    for category, values in rebuilt["categories"].items():
        assert rescored["categories"][category]["image_auroc"] == pytest.approx(values["image_auroc"])
        assert rescored["categories"][category]["aucspro"] == pytest.approx(values["aucspro"])


def _fails_before_any_node(kedro_project, params, **run_args) -> ParameterError:
    index = kedro_project.path / "data/02_intermediate/dataset_index.csv"
    before = index.stat().st_mtime_ns if index.exists() else None
    with pytest.raises(ParameterError) as caught:
        kedro_project.run(params, pipeline_names=["centralized"], **run_args)
    assert (index.stat().st_mtime_ns if index.exists() else None) == before  # ingest never ran
    assert (kedro_project.path / "data/.run.lock").read_text() == ""
    return caught.value


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # Case 3d: these failed only when their node ran (after a full extraction), the seed as a
        # TypeError in round 2, `seed=abc` as "invalid literal for int()" naming nothing.
        ({"seed": "7"}, ["seed: Input should be a valid integer (got '7'"]),
        ({"seed": "abc"}, ["seed: Input should be a valid integer (got 'abc'"]),
        (
            {"coreset": {"ratio": 1.5}, "aggregation": {"strategy": "fedavg"}},
            [
                "coreset.ratio: Input should be less than or equal to 1",
                "aggregation.strategy: unknown strategy",
            ],
        ),
        # Issue 20: a degradation of a client the partition does not have was ignored (rc 0),
        # in the main run and in every variant.
        (
            {"heterogeneity": {"ghost": {"noise_sigma": 0.1}}},
            [
                "heterogeneity.ghost: no client 'ghost' in the partition (federation.partition: category)",
                "variants.federated_iid.heterogeneity.ghost: no client 'ghost' in the partition (federation.partition: iid)",
            ],
        ),
    ],
)
def test_bad_parameters_stop_the_run_before_any_node(kedro_project, first_run, params, expected):
    error = _fails_before_any_node(kedro_project, params)
    assert len(error.problems) == len(expected)
    for problem, start in zip(error.problems, expected, strict=True):
        assert problem.startswith(start), problem


@pytest.mark.slow
def test_pipeline_shaping_parameters_are_checked_before_the_pipelines_are_built(kedro_project, first_run):
    with pytest.raises(ParameterError, match="federation.num_clients: Input should be a valid integer"):
        kedro_project.run(
            {"federation": {"partition": "iid", "num_clients": "abc"}}, pipeline_names=["federated"]
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        # Case 3a: a truncated mask passed indexing and stopped the run only at the metrics node.
        ("truncated_mask", "ground_truth/scratch/0000/0000.png: ground-truth mask is truncated or corrupt"),
        # Case 3b: no test folder ended in "centralized.overlays: Did not find any versions".
        ("no_test_folder", "metal_plate/test: missing"),
        # Case 3c: an empty train/good was a warning at indexing and a KeyError at scoring.
        ("empty_train", "metal_plate/train/good: holds no training image"),
    ],
)
def test_dataset_layout_problems_stop_the_run_before_any_node(
    kedro_project, first_run, tmp_path, breakage, expected
):
    root = _mvtec_dataset(tmp_path / "dataset")
    category = root / "metal_plate"
    if breakage == "truncated_mask":
        _truncate(category / "ground_truth" / "scratch" / "0000" / "0000.png")
    elif breakage == "no_test_folder":
        shutil.rmtree(category / "test")
    else:
        for image in (category / "train" / "good").iterdir():
            image.unlink()
    error = _fails_before_any_node(kedro_project, {"dataset": {"format": "mvtec", "root": str(root)}})
    [problem] = error.problems
    assert problem.startswith(f"dataset.root: {category}/") and expected in problem, problem


@pytest.mark.slow
def test_unreadable_test_images_are_recorded_in_the_metrics(kedro_project, first_run, tmp_path):
    # Case 6 (test images): a truncated test image was skipped at scoring and recorded nowhere.
    root = _mvtec_dataset(tmp_path / "dataset")
    broken = root / "metal_plate" / "test" / "good" / "0001.png"
    _truncate(broken)
    # Issue 20: a file whose header cannot be read was left out at indexing, listed only in the
    # unversioned skipped_files.json, while the versioned metrics said "skipped_test_images": [].
    garbage = root / "metal_plate" / "test" / "good" / "0002.png"
    garbage.write_bytes(b"not an image")
    _, catalog = kedro_project.run({"dataset": {"format": "mvtec", "root": str(root)}}, pipeline_names=["centralized"])
    metrics = catalog.load("metrics_centralized")  # read by report.html, so not a free output
    assert metrics == _latest(kedro_project.path / "data/08_reporting/metrics_centralized.json")
    truncated, unreadable = metrics["skipped_test_images"]
    assert truncated["category"] == "metal_plate" and truncated["path"] == str(broken)
    assert "truncated" in truncated["reason"]  # at scoring: its header reads, its pixels do not
    assert unreadable == {
        "category": "metal_plate",
        "path": str(garbage),
        "reason": next(e["reason"] for e in catalog.load("skipped_files") if e["path"] == str(garbage)),
    }
    assert unreadable["reason"].startswith("unreadable image")  # at indexing
    counts = metrics["categories"]["metal_plate"]
    assert (counts["n_good"], counts["n_anomalous"]) == (1, 3)  # 3 good images minus the two skipped


@pytest.mark.slow
def test_a_failed_run_releases_the_lock_and_removes_stale_scratch(kedro_project, first_run):
    # Case 5: scratch left by an interrupted run is removed when the next run starts.
    project = kedro_project.path
    leftover = project / SCRATCH / "client_all_leftover"
    leftover.mkdir(parents=True)
    (leftover / SCRATCH_MARKER).touch()
    (leftover / "metal_plate.npy").write_bytes(b"\0" * 1024)
    (project / SCRATCH / "unrelated.txt").write_text("not ours: kept")

    # A node that fails mid-run (no WRN50 weight file) still releases the lock.
    with pytest.raises(Exception, match="weights|weight file"):
        kedro_project.run(
            {"backbone": {"name": "wide_resnet50_2", "weights_path": str(project / "missing.pth")}},
            pipeline_names=["centralized"],
        )
    assert not leftover.exists()
    assert sorted(p.name for p in (project / SCRATCH).iterdir()) == ["unrelated.txt"]
    assert (project / "data/.run.lock").read_text() == ""
    kedro_project.run(pipeline_names=["ingest"])  # the next run is not blocked


def _bank(seed: int, rows: int = 12) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"bank/metal": rng.normal(size=(rows, 4)).astype(np.float32), "n_images/metal": np.asarray(2)}


def test_scoring_keeps_a_matching_index_and_rebuilds_a_stale_one(caplog):
    from fedpatchcore.pipelines.evaluation.nodes import build_faiss_index, index_for_bank

    scoring = {"approximate_index_above": None}
    old, new = _bank(0), _bank(1, rows=5)
    index = build_faiss_index(old, scoring, seed=0)
    assert index_for_bank(index, old, scoring) is index  # built from this bank: used as it is
    with caplog.at_level(logging.WARNING, logger="fedpatchcore.pipelines.evaluation.nodes"):
        rebuilt = index_for_bank(index, new, scoring)
    assert rebuilt["metal"].ntotal == 5 and rebuilt.bank_fingerprint == bank_fingerprint(new)
    assert "was built from another memory bank" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedpatchcore.pipelines.evaluation.nodes"):
        assert index_for_bank(dict(index), old, scoring)["metal"].ntotal == 12  # no fingerprint
        assert index_for_bank(index, old, {"approximate_index_above": 4}) is not index  # other settings
    assert "records no fingerprint" in caplog.text and "approximate_index_above=None" in caplog.text
