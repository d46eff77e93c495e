"""The consensus filter calibrated per client and category, and what uploads carry for it and for
soft-weighted scoring (fold labels, row weights) through aggregation and server rounds."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.banks import CategoryBanks, ClientUpload
from fedpatchcore.core.federation.aggregation import aggregate, calibrated_confirmed_rows, validate_upload
from fedpatchcore.core.federation.server import ServerSettings, run_round


def _row(x: float, y: float) -> list[float]:
    return [x, y, 0.0, 0.0]


# Two peers hold a dense line of normal rows. Client "a" sees the same part with a larger normal
# spread: all its rows lie 3-4.5 away from any peer row (while its own rows are ~1 apart), one of
# them rare (4.2 away); one planted defect row lies 9 away. Its rows come in two halves by image.
PEER_B = np.array([_row(x, 0.0) for x in range(10)], dtype=np.float32)
PEER_C = np.array([_row(x + 0.5, 0.0) for x in range(10)], dtype=np.float32)
A_ROWS = np.array(
    [_row(0, 3), _row(2, 3), _row(4, 3), _row(6, 3), _row(8, 4.2), _row(5, 9)]  # fold 0: ..., rare, planted
    + [_row(1, 3.5), _row(3, 3.5), _row(5, 3.5), _row(7, 3.5), _row(9, 4.5)],  # fold 1
    dtype=np.float32,
)
A_FOLDS = np.array([0] * 6 + [1] * 5, dtype=np.int8)
RARE, PLANTED = 4, 5


def _uploads(folds: bool = True) -> list[ClientUpload]:
    halves = {"a": A_FOLDS, "b": np.arange(10) % 2, "c": np.arange(10) % 2}
    return [
        ClientUpload(cid, {"part": rows}, {"part": 6}, folds={"part": halves[cid]} if folds else {})
        for cid, rows in (("a", A_ROWS), ("b", PEER_B), ("c", PEER_C))
    ]


def _kept_rows(result, client_id: str) -> set[int]:
    return set(result.source_row["part"][result.origin["part"] == client_id].tolist())


def test_calibrated_consensus_keeps_the_rare_normal_row_the_fixed_factor_drops():
    fixed = aggregate(_uploads(), "consensus", None, options={"confirm_factor": 1.0})
    assert RARE not in _kept_rows(fixed, "a")  # 4.2 from any peer row, 4x its own spacing
    assert _kept_rows(fixed, "a") == set()  # the fixed factor drops the whole wider category

    calibrated = aggregate(_uploads(), "calibrated_consensus", None)
    kept = _kept_rows(calibrated, "a")
    assert RARE in kept  # within what the client's other half shows (up to 4.5)
    assert PLANTED not in kept  # 9 away: farther than any row of the client's other images
    assert kept == set(range(11)) - {PLANTED}
    assert _kept_rows(calibrated, "b") == set(range(10)) and _kept_rows(calibrated, "c") == set(range(10))


def test_the_threshold_is_a_quantile_of_the_other_halfs_peer_distances():
    distance = np.array([3, 3, 3, 3, 4.2, 9, 3.5, 3.5, 3.5, 3.5, 4.5])
    peers = np.concatenate([PEER_B, PEER_C])
    # quantile 0.5 of fold 1's distances is 3.5: fold 0 keeps its 3s; quantile 0.5 of fold 0's is 3.0
    confirmed = calibrated_confirmed_rows(A_ROWS, peers, A_FOLDS, 0.5)
    expected_0 = distance[:6] <= np.quantile(distance[6:], 0.5)
    expected_1 = distance[6:] <= np.quantile(distance[:6], 0.5)
    np.testing.assert_array_equal(confirmed, np.concatenate([expected_0, expected_1]))
    assert confirmed[:6].tolist() == [True] * 4 + [False, False] and not confirmed[6:].any()


def test_a_client_without_halves_keeps_every_row():
    result = aggregate(_uploads(folds=False), "calibrated_consensus", None)
    assert _kept_rows(result, "a") == set(range(11))
    assert calibrated_confirmed_rows(A_ROWS, PEER_B, np.zeros(11), 1.0).all()  # one half only


def test_a_bad_quantile_names_the_option():
    with pytest.raises(ValueError, match="aggregation.options.confirm_quantile"):
        aggregate(_uploads(), "calibrated_consensus", None, options={"confirm_quantile": 0.0})


# --------------------------------------------------------------------------- row weights and folds on the wire


def test_row_weights_follow_the_rows_through_aggregation():
    weighted = ClientUpload("a", {"part": A_ROWS}, {"part": 6}, weights={"part": np.arange(11, dtype=np.float32) + 1})
    plain = ClientUpload("b", {"part": PEER_B}, {"part": 6})
    result = aggregate([weighted, plain], "federated_coreset", 8, seed=0)
    for row, (client, source) in enumerate(zip(result.origin["part"], result.source_row["part"], strict=True)):
        assert result.weights["part"][row] == (source + 1 if client == "a" else 1.0)
    # nobody sent weights: the bank carries none (its file is what it always was)
    assert aggregate([plain, ClientUpload("c", {"part": PEER_C}, {"part": 6})], "federated_coreset", 8).weights == {}


def test_weights_and_folds_survive_the_flat_form_and_the_record_form():
    upload = ClientUpload(
        "a", {"part": A_ROWS}, {"part": 6}, weights={"part": np.full(11, 1.5)}, folds={"part": A_FOLDS}
    )
    for again in (
        ClientUpload.from_arrays("a", upload.to_arrays()),
        ClientUpload.from_record_parts("a", *upload.record_parts()),
    ):
        np.testing.assert_array_equal(again.row_weights("part"), np.full(11, 1.5, dtype=np.float32))
        np.testing.assert_array_equal(again.folds["part"], A_FOLDS)
    bank = CategoryBanks({"part": A_ROWS}, {"part": 6}, weights={"part": np.full(11, 2.0)})
    assert "weight/part" in bank.to_arrays()
    np.testing.assert_array_equal(CategoryBanks.from_arrays(bank.to_arrays()).row_weights("part"), np.full(11, 2.0))
    assert "weight/part" not in CategoryBanks({"part": A_ROWS}, {"part": 6}).to_arrays()
    assert (CategoryBanks({"part": A_ROWS}, {"part": 6}).row_weights("part") == 1).all()


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"weights": {"part": np.ones(3)}}, "row weights must be one number per row"),
        ({"weights": {"part": np.zeros(11)}}, "row weights must be finite and > 0"),
        ({"folds": {"part": np.full(11, 2)}}, "folds must be 0 or 1"),
    ],
)
def test_malformed_weights_or_folds_reject_the_upload(extra, problem):
    upload = ClientUpload("a", {"part": A_ROWS}, {"part": 6}, **extra)
    assert any(problem in p for p in validate_upload(upload, 4))


def test_a_second_round_keeps_the_weights_of_inherited_rows():
    settings = ServerSettings("federated_coreset", None, min_clients=1, projection_dim=4, seed=0)
    first = run_round(
        [
            ClientUpload("a", {"part": A_ROWS}, {"part": 6}, weights={"part": np.full(11, 3.0)}),
            ClientUpload("b", {"part": PEER_B}, {"part": 6}),
        ],
        settings,
    )
    assert sorted(set(first.bank.row_weights("part").tolist())) == [1.0, 3.0]
    later = ClientUpload("b", {"part": PEER_C[:2]}, {"part": 6}, {"part": np.array([10, 11])})
    second = run_round([later], settings, round_number=2, previous=first.bank)
    origin, weights = second.bank.origin["part"], second.bank.row_weights("part")
    assert (weights[origin == "a"] == 3.0).all() and (weights[origin == "b"] == 1.0).all()
