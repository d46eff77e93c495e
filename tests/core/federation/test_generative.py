"""Federated DP-CVAE training: FedAvg, trust-aware averaging, encoder drift, the round's messages."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.federation import generative as fed
from fedpatchcore.core.federation.heterogeneity import parse_client
from fedpatchcore.core.federation.trust import TrustSettings, model_trust_scores
from fedpatchcore.core.privacy import generative as gen
from fedpatchcore.core.privacy.model_averaging import fedavg_weights, weighted_average
from fedpatchcore.core.privacy.release import PrivacySettings
from tests.core.privacy.test_generative import CATEGORIES, DIM, tiny_data, tiny_settings


def test_client_data_takes_public_positions_of_every_image(tmp_path):
    from fedpatchcore.core.features.extraction import ExtractedFeatures
    from fedpatchcore.core.features.feature_store import PatchFeatureWriter
    from fedpatchcore.core.privacy.release import choose_positions

    settings = tiny_settings(patches_per_image=3, position_grid=2, feature_scale=2.0)
    grid = (4, 4)
    rows = np.arange(2 * 16 * DIM, dtype=np.float32).reshape(2 * 16, DIM)  # 2 images, 16 positions each
    writer = PatchFeatureWriter(tmp_path / "a.npy", dim=DIM, projection_dim=None, seed=0)
    writer.append(rows)
    features = ExtractedFeatures({"a": writer.close()}, {"a": ["x1", "x2"]}, {"a": grid})
    data = fed.client_data(
        features, gen.ModelShape.of(DIM, CATEGORIES, settings), settings, seed=5, client_id="c"
    )
    assert data.x.shape == (2, 3, DIM)
    for image, key in enumerate(["x1", "x2"]):
        positions = choose_positions(grid, 3, 5, "c", key)
        np.testing.assert_allclose(data.x[image] * 2.0, rows[image * 16 + positions], rtol=1e-3)
        cells = gen.coarse_cells(positions, grid, 2)
        np.testing.assert_array_equal(data.conditions[image, :, 2:].argmax(-1), cells)
    np.testing.assert_array_equal(data.category, [0, 0])


def test_fedavg_of_identical_models_is_the_identity():
    rng = np.random.default_rng(0)
    model = {"w": rng.normal(size=(7, 5)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    averaged = weighted_average([model, dict(model), dict(model)], [3.0, 1.0, 17.0])
    for name, value in model.items():
        np.testing.assert_array_equal(averaged[name], value)
        assert averaged[name].dtype == np.float32


def test_weighted_average_by_hand_and_its_errors():
    a = {"w": np.array([1.0, 2.0], np.float32)}
    b = {"w": np.array([5.0, -2.0], np.float32)}
    np.testing.assert_allclose(weighted_average([a, b], [1, 3])["w"], [4.0, -1.0])
    np.testing.assert_allclose(weighted_average([a, b], [0, 2])["w"], b["w"])  # weight 0 leaves a out
    assert fedavg_weights({"1": 10, "2": 30}) == {"1": 10.0, "2": 30.0}
    with pytest.raises(ValueError, match="every averaging weight is 0"):
        weighted_average([a, b], [0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        weighted_average([a, b], [1, -1])
    with pytest.raises(ValueError, match="parameter 'w' has different shapes"):
        weighted_average([a, {"w": np.zeros(3, np.float32)}], [1, 1])
    with pytest.raises(ValueError, match="holds parameters"):
        weighted_average([a, {"v": a["w"]}], [1, 1])


def test_model_trust_by_hand():
    """C = peers' median MMD / own; R likewise; no quality report: Q = 1; T = mean of the three."""
    numbers = {
        cid: {"report.reconstruction.a": 0.5, "report.consistency.a": consistency}
        for cid, consistency in (("1", 0.1), ("2", 0.1), ("3", 0.4))
    }
    numbers["2"]["report.reconstruction.a"] = 1.0  # R of client 2: median 0.5 / 1.0
    n_images = {cid: {"a": 10} for cid in numbers}
    scores = model_trust_scores(numbers, n_images, TrustSettings(min_trust=0.7))
    assert scores["3"]["consistency"] == pytest.approx(0.25)
    assert scores["3"]["trust"] == pytest.approx((1 + 1 + 0.25) / 3)
    assert scores["2"]["reliability"] == pytest.approx(0.5)
    assert scores["2"]["trust"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert scores["1"]["trust"] == pytest.approx(1.0)
    assert scores["2"]["excluded"] is False and scores["3"]["excluded"] is False
    # A category one client alone holds says nothing about it: neutral terms.
    alone = model_trust_scores({"1": {"report.consistency.b": 2.0}}, {"1": {"b": 4}}, TrustSettings())
    assert alone["1"]["trust"] == pytest.approx(1.0)


def test_model_update_round_trips_through_flat_arrays():
    update = fed.ModelUpdate(
        "3", {"encoder.0.weight": np.ones((2, 3), np.float32)}, {"a": 5}, {"report.consistency.a": 0.2}
    )
    back = fed.ModelUpdate.from_arrays("3", update.to_arrays())
    assert (
        back.n_images == {"a": 5} and back.numbers == {"report.consistency.a": 0.2} and back.n_examples == 5
    )
    np.testing.assert_array_equal(back.weights["encoder.0.weight"], 1.0)
    with pytest.raises(ValueError, match="model update of client '3'"):
        fed.ModelUpdate.from_arrays("3", {"bank/a": np.zeros(2)})


def test_generative_settings_read_the_run_blocks():
    settings = fed.GenerativeSettings.from_parameters(
        "2",
        privacy={
            "enabled": True,
            "epsilon": 4.0,
            "mechanism": "dp_cvae",
            "dp_cvae": {"latent_dim": 5, "averaging": "trust", "rounds": 3},
        },
        seed=7,
        heterogeneity={"2": {"encoder_drift": 2.5}},
    )
    assert settings.cvae.latent_dim == 5 and settings.cvae.reports
    assert settings.drift == 2.5 and settings.cvae.rounds == 3 and settings.privacy.epsilon == 4.0
    with pytest.raises(ValueError, match=r"privacy.dp_cvae.latent_dim must be int"):
        fed.GenerativeSettings.from_parameters("2", privacy={"dp_cvae": {"latent_dim": "5"}}, seed=0)
    with pytest.raises(ValueError, match=r"heterogeneity.2.encoder_drift"):
        fed.GenerativeSettings.from_parameters(
            "2", privacy={}, seed=0, heterogeneity={"2": {"encoder_drift": "big"}}
        )


def _three_clients(averaging: str, drift: float):
    cvae = tiny_settings(local_epochs=10, averaging=averaging, holdout_fraction=0.25, report_clip=50.0)
    privacy = {"enabled": False, "mechanism": "dp_cvae", "dp_cvae": {}}
    heterogeneity = {"3": {"encoder_drift": drift}} if drift else {}
    settings = {
        cid: fed.GenerativeSettings(
            cid,
            cvae,
            PrivacySettings.from_parameters(privacy, 0),
            0,
            parse_client(cid, heterogeneity.get(cid)).encoder_drift,
        )
        for cid in ("1", "2", "3")
    }
    data = {cid: tiny_data(cvae, n_images=40, seed=int(cid)) for cid in settings}
    shape = fed.model_shape(DIM, CATEGORIES, cvae)
    updates = [fed.client_round(data[cid], shape, None, settings[cid], 1) for cid in settings]
    return cvae, updates


def test_trust_lowers_the_weight_of_a_drifted_client():
    cvae, updates = _three_clients("trust", drift=4.0)
    _, report = fed.average_round(updates, cvae, TrustSettings(), round_number=1)
    weights, trust = report["client_weights"], report["trust"]
    assert trust["3"]["consistency"] < 0.5 and trust["1"]["consistency"] == 1.0
    # T = (Q + R + C) / 3 with Q = R = 1: the drifted client keeps (2 + C) / 3 of its FedAvg share.
    assert weights["3"] < 0.85 / 3 and weights["3"] < min(weights["1"], weights["2"])
    _, strict = fed.average_round(updates, cvae, TrustSettings(min_trust=0.9), round_number=1)
    assert strict["client_weights"]["3"] == 0.0 and strict["trust"]["3"]["excluded"]
    # FedAvg of the same updates weighs them by images alone.
    _, plain = fed.average_round(updates, tiny_settings(averaging="fedavg"), TrustSettings(), round_number=1)
    assert plain["client_weights"] == pytest.approx({"1": 1 / 3, "2": 1 / 3, "3": 1 / 3})
    assert plain["trust"] == {}


def test_first_round_starts_every_client_from_the_same_public_model():
    cvae, updates = _three_clients("fedavg", drift=0.0)
    assert {u.client_id for u in updates} == {"1", "2", "3"}
    assert all(u.n_images == {"a": 15, "b": 15} for u in updates)
    assert all(u.numbers == {} for u in updates)  # FedAvg: no reports
    averaged, report = fed.average_round(updates, cvae, TrustSettings(), 1)
    assert report["uploaded_bytes"] == sum(u.nbytes for u in updates)
    assert set(averaged) == set(updates[0].weights)


def test_a_dp_cvae_variant_shares_features_but_never_a_rows_lane():
    from fedpatchcore.core.federation.client import coreset_inputs, feature_inputs
    from fedpatchcore.core.privacy.release import public_transform

    rows = {"seed": 0, "backbone": {}, "extraction": {}, "coreset": {"ratio": 0.1}, "privacy": {"enabled": False}}
    cvae = {**rows, "privacy": {"enabled": False, "mechanism": "dp_cvae"}}
    drifted = {**cvae, "heterogeneity": {"1": {"encoder_drift": 3.0}}}
    blurred = {**cvae, "heterogeneity": {"1": {"encoder_drift": 3.0, "motion_blur": 5}}}
    assert feature_inputs(rows, "1") == feature_inputs(cvae, "1") == feature_inputs(drifted, "1")
    assert feature_inputs(blurred, "1")["heterogeneity.1"] == {"motion_blur": 5}  # images degraded: own extraction
    assert coreset_inputs(rows, "1") != coreset_inputs(cvae, "1")  # no raw coreset rows in a DP-CVAE lane
    # A DP-CVAE's bank lives in the backbone's space: scoring applies no clipping map.
    settings = PrivacySettings.from_parameters({"enabled": True, "mechanism": "dp_cvae"}, seed=0)
    assert public_transform(settings, 8) is None
    assert public_transform(PrivacySettings.from_parameters({"enabled": True}, seed=0), 8) is not None
