"""Trust terms on synthetic banks: monotone in the damage, lowest for the poisoned client."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.banks import ClientUpload
from fedpatchcore.core.federation.aggregation import aggregate, confirmed_rows
from fedpatchcore.core.federation.server import ServerSettings, run_round
from fedpatchcore.core.federation.trust import (
    NOISE,
    SHARPNESS,
    QualityMeter,
    TrustSettings,
    mmd2,
    trust_scores,
)

DIM = 8


def _bank(seed: int, rows: int = 80, shift: float = 0.0, outliers: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bank = rng.normal(size=(rows, DIM)) + shift
    if outliers:
        bank[:outliers] += 8.0  # rows nobody else has: defective patches in a "good" folder
    return bank.astype(np.float32)


def _upload(client_id: str, bank: np.ndarray, sharpness: float = 100.0, noise: float = 2.0) -> ClientUpload:
    numbers = {f"{SHARPNESS}.plate": sharpness, f"{NOISE}.plate": noise}
    return ClientUpload(client_id, {"plate": bank}, {"plate": 10}, numbers=numbers)


def _clients(first: ClientUpload) -> list[ClientUpload]:
    return [first, *(_upload(str(i), _bank(i)) for i in range(2, 6))]


# These banks are random draws, not k-center coresets, so a client's rows lie as densely as the
# others' union; a wider confirmation radius than the coreset-calibrated default fits them.
SETTINGS = TrustSettings(confirm_factor=2.0)


@pytest.mark.parametrize("term", ["reliability", "consistency"])
def test_row_terms_fall_as_a_client_drifts_away(term):
    values = [trust_scores(_clients(_upload("1", _bank(1, shift=shift))), SETTINGS)["1"][term] for shift in (0, 1, 2, 4)]
    assert values[0] > 0.9
    assert all(a >= b for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] < 0.5 * values[0]


def test_reliability_falls_with_the_share_of_unconfirmed_rows():
    values = [trust_scores(_clients(_upload("1", _bank(1, outliers=n))), SETTINGS)["1"]["reliability"] for n in (0, 8, 16, 32)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values


def test_quality_falls_with_reported_noise_and_blur():
    noisy = [trust_scores(_clients(_upload("1", _bank(1), noise=n)), SETTINGS)["1"]["quality"] for n in (2, 4, 8)]
    blurred = [trust_scores(_clients(_upload("1", _bank(1), sharpness=s)), SETTINGS)["1"]["quality"] for s in (100, 50, 10)]
    assert noisy == sorted(noisy, reverse=True) and noisy[-1] == pytest.approx(0.25)
    assert blurred == sorted(blurred, reverse=True) and blurred[-1] == pytest.approx(0.1)


def test_poisoned_client_gets_the_lowest_trust_and_is_excluded_by_the_trust_strategy():
    uploads = _clients(_upload("1", _bank(1, outliers=30)))
    scores = trust_scores(uploads, SETTINGS)
    assert min(scores, key=lambda c: scores[c]["trust"]) == "1"
    assert min(scores, key=lambda c: scores[c]["weight"]) == "1"
    for score in scores.values():
        assert 0.0 <= score["trust"] <= 1.0

    strict = ServerSettings(
        "trust", 200, 1, 8, 0, trust=TrustSettings(confirm_factor=2.0, min_trust=scores["1"]["trust"] + 1e-6)
    )
    result = run_round(uploads, strict)
    assert result.report["trust"]["1"]["excluded"] and "1" not in result.report["contributions"]["plate"]
    # Weighted, not excluded: the poisoned client's share of a bounded bank shrinks.
    lenient = run_round(uploads, ServerSettings("trust", 200, 1, 8, 0, trust=TrustSettings(confirm_factor=2.0, min_trust=0.0)))
    even = run_round(uploads, ServerSettings("federated_coreset", 200, 1, 8, 0))
    assert lenient.report["contributions"]["plate"]["1"] < even.report["contributions"]["plate"]["1"]
    assert lenient.report["client_weights"]["1"] == pytest.approx(scores["1"]["trust"])


def test_a_category_held_by_one_client_keeps_neutral_terms():
    scores = trust_scores([_upload("1", _bank(1, shift=5)), ClientUpload("2", {"fabric": _bank(2)}, {"fabric": 3})], SETTINGS)
    assert scores["1"]["reliability"] == scores["1"]["consistency"] == 1.0


def test_trust_settings_are_checked():
    with pytest.raises(ValueError, match="trust.alpha"):
        TrustSettings(alpha=-1)
    with pytest.raises(ValueError, match="trust.min_trust"):
        TrustSettings(min_trust=2)
    assert TrustSettings.from_parameters({"alpha": 0.0, "min_trust": 0.3}, seed=4) == TrustSettings(alpha=0.0, min_trust=0.3, seed=4)


def test_quality_meter_reports_per_category_means():
    meter = QualityMeter()
    flat = np.full((16, 16, 3), 128, np.uint8)
    meter.add("plate", flat)
    meter.add("plate", flat)
    assert meter.numbers() == {f"{SHARPNESS}.plate": 0.0, f"{NOISE}.plate": 0.0}


def test_mmd_is_zero_for_the_same_distribution_and_grows_with_a_shift():
    a, b = _bank(1, rows=60), _bank(2, rows=60)
    assert mmd2(a, a) == pytest.approx(0.0, abs=1e-9)
    assert mmd2(a, b) < mmd2(a, b + 1.0) < mmd2(a, b + 3.0)


def test_consensus_filter_drops_only_rows_no_one_confirms():
    poisoned = _bank(1, outliers=10)
    uploads = [ClientUpload("1", {"plate": poisoned}, {"plate": 10})] + [
        ClientUpload(str(i), {"plate": _bank(i)}, {"plate": 10}) for i in (2, 3)
    ]
    result = aggregate(uploads, "consensus", None, options={"confirm_factor": 2.0})
    from_1 = result.source_row["plate"][result.origin["plate"] == "1"]
    assert not set(range(10)) & set(from_1.tolist())  # the outliers are gone
    assert len(from_1) >= 60  # most of its normal rows are kept
    assert confirmed_rows(poisoned, np.concatenate([_bank(2), _bank(3)]), 2.0)[:10].sum() == 0
