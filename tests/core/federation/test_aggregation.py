from __future__ import annotations

import logging

import numpy as np
import pytest

from fedpatchcore.core.banks import ClientUpload
from fedpatchcore.core.federation.aggregation import (
    STRATEGIES,
    AggregationError,
    aggregate,
    covering_radius_estimate,
    register_strategy,
    uncovered_rows,
    validate_upload,
)

DIM = 6


def bank(seed: int, rows: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def uploads() -> list[ClientUpload]:
    return [
        ClientUpload("a", {"cat1": bank(1, 30), "cat2": bank(2, 12)}, {"cat1": 100, "cat2": 40}),
        ClientUpload("b", {"cat1": bank(3, 20)}, {"cat1": 300}),
        ClientUpload("c", {"cat1": bank(4, 25), "cat2": bank(5, 10)}, {"cat1": 100, "cat2": 10}),
    ]


def assert_rows_traceable(result, ups):
    """Every global row is an exact row of the upload its origin names."""
    by_client = {u.client_id: u for u in ups}
    for cat, global_bank in result.banks.items():
        assert global_bank.dtype == np.float32
        assert len(result.origin[cat]) == len(global_bank)
        seen = set()
        for row, cid in zip(global_bank, result.origin[cat], strict=True):
            source = by_client[str(cid)].banks[cat]
            hits = np.flatnonzero((source == row).all(axis=1))
            assert len(hits) == 1
            seen.add((str(cid), int(hits[0])))
        assert len(seen) == len(global_bank)  # no row chosen twice
        counts = {cid: int((result.origin[cat] == cid).sum()) for cid in result.contributions[cat]}
        assert counts == result.contributions[cat]


def test_upload_bytes():
    up = ClientUpload(
        "a", {"x": np.zeros((10, 4), np.float32), "y": np.zeros((3, 4), np.float16)}, {"x": 1, "y": 1}
    )
    assert up.nbytes == 10 * 4 * 4 + 3 * 4 * 2


def test_concatenate_keeps_all_or_reduces():
    ups = uploads()
    snapshot = [{c: b.copy() for c, b in u.banks.items()} for u in ups]
    full = aggregate(ups, "concatenate", None)
    assert full.banks["cat1"].shape == (75, DIM) and full.banks["cat2"].shape == (22, DIM)
    assert full.contributions["cat1"] == {"a": 30, "b": 20, "c": 25}
    assert_rows_traceable(full, ups)
    small = aggregate(ups, "concatenate", 16, seed=1)
    assert small.banks["cat1"].shape == (16, DIM) and small.banks["cat2"].shape == (16, DIM)
    assert_rows_traceable(small, ups)
    small.banks["cat1"][:] = 0  # result banks are fresh arrays, not views of the uploads
    for u, snap in zip(ups, snapshot, strict=True):  # inputs untouched
        for c in snap:
            np.testing.assert_array_equal(u.banks[c], snap[c])
    again = aggregate(ups, "concatenate", 16, seed=1)
    np.testing.assert_array_equal(again.banks["cat2"], small.banks["cat2"])
    np.testing.assert_array_equal(again.origin["cat1"], small.origin["cat1"])


def test_diversity_needs_size():
    ups = uploads()
    r = aggregate(ups, "diversity", 10)
    assert all(b.shape == (10, DIM) for b in r.banks.values())
    assert_rows_traceable(r, ups)
    with pytest.raises(ValueError, match="global_bank_size"):
        aggregate(ups, "diversity", None)


def test_federated_coreset_quotas_proportional_and_exact():
    ups = uploads()
    r = aggregate(ups, "federated_coreset", 20)
    # cat1 n_images 100:300:100 -> 4:12:4; cat2 40:10 -> 16:4
    assert r.contributions["cat1"] == {"a": 4, "b": 12, "c": 4}
    assert_rows_traceable(r, ups)
    assert all(len(b) == 20 for b in r.banks.values())


def test_federated_coreset_caps_and_redistributes():
    # cat2: a would get 16 of 20 but has only 12 rows -> gives 12, c gives 8
    r = aggregate(uploads(), "federated_coreset", 20)
    assert r.contributions["cat2"] == {"a": 12, "c": 8}


def test_client_weights_scale_and_zero_drops():
    ups = uploads()
    r = aggregate(ups, "federated_coreset", 20, client_weights={"b": 0.0, "c": 3.0})
    assert "b" not in r.contributions["cat1"]
    assert r.contributions["cat1"] == {"a": 5, "c": 15}
    assert "b" not in set(r.origin["cat1"])
    r2 = aggregate(ups, "concatenate", None, client_weights={"b": 0})
    assert set(r2.origin["cat1"]) == {"a", "c"}
    assert r2.rejected == {}


@pytest.mark.parametrize(
    "bad_bank, problem",
    [
        (bank(9, 5, DIM + 1), "dimension"),
        (np.where(np.eye(5, DIM) > 0, np.nan, 1.0).astype(np.float32), "NaN"),
        (np.where(np.eye(5, DIM) > 0, np.inf, 1.0).astype(np.float32), "inf"),
        (np.zeros((0, DIM), np.float32), "zero rows"),
        (np.zeros(DIM, np.float32), "2-D"),
    ],
)
def test_malformed_upload_rejected_whole(bad_bank, problem, caplog):
    ups = uploads()
    ups.append(ClientUpload("bad", {"cat1": bank(7, 5), "cat2": bad_bank}, {"cat1": 5, "cat2": 5}))
    assert any(problem in p for p in validate_upload(ups[-1], DIM))
    with caplog.at_level(logging.WARNING):
        r = aggregate(ups, "concatenate", None)
    assert "bad" in caplog.text and problem in caplog.text
    assert list(r.rejected) == ["bad"]
    assert "bad" not in r.contributions["cat1"] and "bad" not in r.contributions["cat2"]
    assert r.contributions["cat1"] == {"a": 30, "b": 20, "c": 25}
    assert_rows_traceable(r, ups[:3])


def test_n_images_problems_and_min_clients():
    up = ClientUpload("x", {"cat1": bank(1, 4)}, {})
    assert any("n_images" in p for p in validate_upload(up, DIM))
    up0 = ClientUpload("y", {"cat1": bank(1, 4)}, {"cat1": 0})
    assert any("n_images" in p for p in validate_upload(up0, DIM))
    ups = uploads()[:1] + [up, up0]
    with pytest.raises(AggregationError, match="aggregation.min_clients") as excinfo:
        aggregate(ups, "concatenate", None, min_clients=2, expected_dim=DIM)
    assert "'x'" in str(excinfo.value) and "'y'" in str(excinfo.value)
    r = aggregate(ups, "concatenate", None, min_clients=1, expected_dim=DIM)
    assert sorted(r.rejected) == ["x", "y"] and set(r.origin["cat1"]) == {"a"}


def test_unknown_strategy_and_registry():
    with pytest.raises(ValueError, match="aggregation.strategy"):
        aggregate(uploads(), "nope", 10)

    @register_strategy("first_rows_test")
    def first_rows(parts, size):
        return np.zeros(size, np.int64), np.arange(size)

    try:
        r = aggregate(uploads(), "first_rows_test", 3)
        np.testing.assert_array_equal(r.banks["cat1"], uploads()[0].banks["cat1"][:3])
        assert r.origin["cat1"].tolist() == ["a", "a", "a"]
    finally:
        STRATEGIES.pop("first_rows_test")


def test_uncovered_rows_hand_built():
    global_bank = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
    local = np.array([[0.5, 0.0], [10.0, 0.9], [5.0, 0.0], [0.0, -3.0]], np.float32)
    assert uncovered_rows(local, global_bank, 1.0).tolist() == [False, False, True, True]
    assert uncovered_rows(local, np.zeros((0, 2), np.float32), 1.0).all()
    assert covering_radius_estimate(np.array([[0, 0], [3, 0], [3, 4]], np.float32), 1.0) == pytest.approx(4.0)
