"""Server nodes of the federated pipeline on small hand-made uploads (no Kedro session).

The round logic itself is tested in tests/core/federation/test_federation.py; these check the thin node layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.types import samples_to_frame
from fedpatchcore.core.federation.aggregation import AggregationError
from fedpatchcore.pipelines.federated import nodes
from fedpatchcore.pipelines.ingest.nodes import reserve_label_noise_images
from tests.core.federation.test_heterogeneity import label_noise_dataset

AGGREGATION = {"strategy": "federated_coreset", "global_bank_size": None, "min_clients": 1}
SERVER = {
    "aggregation": AGGREGATION,
    "coreset": {"projection_dim": 8},
    "trust": {"min_trust": 0.5},
    "seed": 0,
    "fairness": {"mode": "none", "group_by": "category", "min_share": 0.1},
}


def _coreset(offset: float, rows: int = 6, dim: int = 4, n_images: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(offset * 10))
    bank = (offset + rng.normal(size=(rows, dim))).astype(np.float32)
    return CategoryBanks({"plate": bank}, {"plate": n_images}).to_arrays()


def test_poisoned_upload_is_rejected_and_the_round_goes_on():
    good_a, good_b = _coreset(0.0), _coreset(5.0)
    poisoned = _coreset(9.0)
    poisoned["bank/plate"][2, 1] = np.nan
    bank_arrays, report = nodes.aggregate_first_round(
        good_a, poisoned, good_b, parameters=SERVER, client_ids=["a", "evil", "b"]
    )
    bank = CategoryBanks.from_arrays(bank_arrays)
    assert "evil" in report["rejected"] and any(
        "NaN" in p or "nan" in p.lower() for p in report["rejected"]["evil"]
    )
    assert set(bank.origin["plate"]) == {"a", "b"}
    assert len(bank.banks["plate"]) == 12  # null global size keeps every valid row
    assert bank.n_images["plate"] == 6  # the rejected client's images do not count
    # What was sent is still accounted for, rejected or not.
    assert set(report["uploaded"]) == {"a", "evil", "b"}
    assert report["uploaded_bytes"] == 3 * 6 * 4 * 4


def test_too_few_valid_clients_fails_the_round():
    wrong_dimension = _coreset(1.0)
    wrong_dimension["bank/plate"] = wrong_dimension["bank/plate"][:, :3]
    with pytest.raises(AggregationError, match="min_clients"):
        nodes.aggregate_first_round(
            _coreset(0.0),
            wrong_dimension,
            _coreset(4.0),
            parameters={**SERVER, "aggregation": {**AGGREGATION, "min_clients": 3}},
            client_ids=["a", "bad", "c"],
        )


def test_summary_counts_raw_image_bytes_per_client(tmp_path):
    files = {}
    for key, size in (("plate/train/good/0", 100), ("plate/train/good/1", 250)):
        path = tmp_path / f"{key.replace('/', '_')}.png"
        path.write_bytes(b"x" * size)
        files[key] = str(path)
    index = pd.DataFrame({"key": list(files), "image_path": list(files.values())})
    partition = {"a": ["plate/train/good/0"], "b": ["plate/train/good/1"]}
    stats = {"partition": "iid", "clients": {"a": {"n_images": 1}, "b": {"n_images": 1}}}
    bank, report = nodes.aggregate_first_round(_coreset(0.0), _coreset(3.0), parameters=SERVER, client_ids=["a", "b"])
    summary = nodes.summarise_federated_run(
        {"categories": {}, "mean": {}}, bank, partition, stats, index, AGGREGATION, report
    )
    assert summary["clients"]["a"]["raw_image_bytes"] == 100
    assert summary["clients"]["b"]["raw_image_bytes"] == 250
    assert summary["communication"]["raw_image_bytes"] == 350
    assert summary["communication"]["uploaded_bytes"] == report["uploaded_bytes"] == 2 * 6 * 4 * 4
    assert summary["communication"]["model_broadcast_bytes"] == 12 * 4 * 4 * 2


def test_label_noise_images_reach_one_client_and_no_evaluation():
    index = samples_to_frame(label_noise_dataset())
    federation = {"partition": "iid", "num_clients": 2}
    heterogeneity = {"1": {"label_noise": 0.3}}
    variants = {
        "federated": {"seed": 0, "federation": federation, "heterogeneity": {}},
        "noisy": {"seed": 0, "federation": federation, "heterogeneity": heterogeneity},
    }
    pool, evaluation = reserve_label_noise_images(index, variants, seed=0)
    reserved = {key for keys in pool.values() for key in keys}
    assert reserved and all("/test/scratch/" in key for key in reserved)
    # Label-noise images never reach evaluation, in any variant.
    assert reserved.isdisjoint(evaluation["key"]) and len(evaluation) == len(index) - len(reserved)

    clean = nodes.partition_clients(index, pool, federation, {}, 0, client_ids=["1", "2"])
    noisy = nodes.partition_clients(index, pool, federation, heterogeneity, 0, client_ids=["1", "2"])
    clean_1, noisy_1 = set(clean[2]["key"]), set(noisy[2]["key"])
    assert noisy_1 - clean_1 <= reserved and len(noisy_1) == len(clean_1)
    pd.testing.assert_frame_equal(clean[3], noisy[3])  # client 2's table is untouched
    assert set(noisy[0]["1"]) == noisy_1  # the partition and client 1's table agree
