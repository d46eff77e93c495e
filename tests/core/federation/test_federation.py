"""The client and the server of core/federation on small hand-made data (no Kedro, no Flower)."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.banks import CategoryBanks, ClientUpload
from fedpatchcore.core.features.extraction import ExtractedFeatures
from fedpatchcore.core.features.feature_store import PatchFeatureWriter
from fedpatchcore.core.federation import client
from fedpatchcore.core.federation.aggregation import STRATEGIES, AggregationError, register_strategy
from fedpatchcore.core.federation.server import PREVIOUS_ROUND, ServerSettings, run_round
from fedpatchcore.core.federation.trust import TrustSettings

SETTINGS = ServerSettings("federated_coreset", None, min_clients=1, projection_dim=8, seed=0)


def _client_settings(client_id: str = "a", **overrides) -> client.ClientSettings:
    federation = {"coverage_quantile": 0.5, "client_coreset_ratios": {}, **overrides.pop("federation", {})}
    coreset = {"ratio": 0.25, "max_size": None, "projection_dim": 8, "num_starts": 1, "device": "cpu", **overrides}
    return client.ClientSettings.from_run(
        {"coreset": coreset, "federation": federation, "extraction": {"batch_size": 2, "num_workers": 0}, "seed": 0}, client_id
    )


def _upload(client_id: str, offset: float, rows: int = 6, dim: int = 4, n_images: int = 3) -> ClientUpload:
    rng = np.random.default_rng(int(offset * 10))
    bank = (offset + rng.normal(size=(rows, dim))).astype(np.float32)
    # Row ids as a client with a 20-row local coreset that sent every other row would give.
    return ClientUpload(client_id, {"plate": bank}, {"plate": n_images}, {"plate": np.arange(rows) * 2})


def _rows(*xs: float) -> np.ndarray:
    return np.array([[x, 0.0, 0.0, 0.0] for x in xs], dtype=np.float32)


# --------------------------------------------------------------------------- client


@pytest.fixture
def features(tmp_path) -> tuple[ExtractedFeatures, dict[str, np.ndarray]]:
    """Two categories of 3 images on a 2x4 patch grid, each patch a distinct vector."""
    rng = np.random.default_rng(0)
    files, vectors = {}, {}
    for category in ("plate", "fabric"):
        rows = rng.normal(size=(3 * 8, 6)).astype(np.float32)
        writer = PatchFeatureWriter(tmp_path / f"{category}.npy", dim=6, projection_dim=8, seed=0)
        writer.append(rows)
        files[category] = writer.close()
        vectors[category] = rows
    keys = {c: [f"{c}/train/good/{i}" for i in range(3)] for c in files}
    return ExtractedFeatures(files, keys, {c: (2, 4) for c in files}, skipped=[{"path": "x", "reason": "bad"}]), vectors


def test_local_coreset_knows_which_image_and_patch_each_row_came_from(features):
    extracted, vectors = features
    local = client.select_local_coreset(extracted, _client_settings())
    assert local.n_images == {"plate": 3, "fabric": 3}
    assert local.numbers == {"images.skipped": 1.0}
    for category, bank in local.banks.items():
        assert len(bank) == 6  # ceil(24 * 0.25)
        image, y, x = local.patch_source[category].T
        assert (image < 3).all() and (y < 2).all() and (x < 4).all()
        source_rows = image * 8 + y * 4 + x
        np.testing.assert_allclose(bank, vectors[category][source_rows], atol=1e-2)  # stored as fp16
    again = client.LocalCoreset.from_arrays(local.to_arrays())
    assert again.image_keys == local.image_keys and again.numbers == local.numbers
    np.testing.assert_array_equal(again.patch_source["plate"], local.patch_source["plate"])


def test_per_client_coreset_ratio_overrides_the_shared_one(features):
    extracted, _ = features
    settings = _client_settings("qc", federation={"client_coreset_ratios": {"qc": 0.5}})
    assert settings.coreset_ratio == 0.5
    assert len(client.select_local_coreset(extracted, settings).banks["plate"]) == 12
    assert _client_settings("other", federation={"client_coreset_ratios": {"qc": 0.5}}).coreset_ratio == 0.25


def test_first_upload_is_the_whole_coreset_without_provenance(features):
    extracted, _ = features
    local = client.select_local_coreset(extracted, _client_settings())
    upload = client.build_upload(local, _client_settings())
    np.testing.assert_array_equal(upload.banks["plate"], local.banks["plate"])
    np.testing.assert_array_equal(upload.row_ids["plate"], np.arange(6))
    assert upload.n_images == {"plate": 3, "fabric": 3}
    arrays = upload.to_arrays()
    # Nothing in the upload says which image or where: provenance stays on the site.
    assert {key.split("/")[0] for key in arrays} == {"bank", "n_images", "row_id", "number"}
    back = ClientUpload.from_arrays("a", arrays)
    assert back.numbers == upload.numbers and back.n_images == upload.n_images


def test_later_upload_sends_only_rows_the_broadcast_bank_misses():
    # Broadcast bank: two rows 0.5 apart, so the covering radius is 0.5 at any quantile.
    broadcast = CategoryBanks({"plate": _rows(0.0, 0.5)}, {"plate": 6})
    local = client.LocalCoreset({"plate": _rows(0.1, 0.45, 2.0, 5.0)}, {"plate": ["k"]}, {"plate": np.zeros((4, 3))})
    upload = client.build_upload(local, _client_settings(), broadcast)
    np.testing.assert_array_equal(upload.banks["plate"], _rows(2.0, 5.0))
    np.testing.assert_array_equal(upload.row_ids["plate"], [2, 3])


def test_coverage_quantile_decides_what_counts_as_covered():
    # Bank rows at 0, 1 and 3: nearest-neighbour distances 1, 1, 2.
    broadcast = CategoryBanks({"plate": _rows(0.0, 1.0, 3.0)}, {"plate": 1})
    local = client.LocalCoreset({"plate": _rows(4.5)}, {"plate": ["k"]}, {"plate": np.zeros((1, 3))})
    strict = client.build_upload(local, _client_settings(federation={"coverage_quantile": 0.0}), broadcast)
    loose = client.build_upload(local, _client_settings(federation={"coverage_quantile": 1.0}), broadcast)
    assert len(strict.banks["plate"]) == 1  # 1.5 from the bank > radius 1
    assert len(loose.banks["plate"]) == 0  # 1.5 <= radius 2


# --------------------------------------------------------------------------- server


def test_poisoned_upload_is_rejected_and_the_round_goes_on():
    poisoned = _upload("evil", 9.0)
    poisoned.banks["plate"][2, 1] = np.nan
    result = run_round([_upload("a", 0.0), poisoned, _upload("b", 5.0)], SETTINGS)
    report, bank = result.report, result.bank
    assert "evil" in report["rejected"] and any("NaN" in p for p in report["rejected"]["evil"])
    assert set(bank.origin["plate"]) == {"a", "b"}
    assert len(bank.banks["plate"]) == 12  # null global size keeps every valid row
    assert bank.n_images["plate"] == 6  # the rejected client's images do not count
    # Every row is traced to its client and to that client's local coreset row.
    assert sorted(bank.origin_row["plate"][bank.origin["plate"] == "a"].tolist()) == [0, 2, 4, 6, 8, 10]
    # What was sent is still accounted for, rejected or not.
    assert set(report["uploaded"]) == {"a", "evil", "b"}
    assert report["uploaded_bytes"] == 3 * 6 * 4 * 4


def test_malformed_row_ids_are_rejected():
    bad = _upload("b", 5.0)
    bad.row_ids["plate"] = np.zeros(6, dtype=np.int64)  # not distinct
    result = run_round([_upload("a", 0.0), bad], SETTINGS)
    assert "b" in result.report["rejected"]
    assert set(result.bank.origin["plate"]) == {"a"}


def test_too_few_valid_clients_fails_the_round():
    wrong_dimension = _upload("bad", 1.0)
    wrong_dimension.banks["plate"] = wrong_dimension.banks["plate"][:, :3]
    with pytest.raises(AggregationError, match="min_clients"):
        run_round(
            [_upload("a", 0.0), wrong_dimension, _upload("c", 4.0)],
            ServerSettings("federated_coreset", None, min_clients=3, projection_dim=8, seed=0),
        )


def test_second_round_keeps_every_rows_first_origin():
    first = run_round(
        [
            ClientUpload("a", {"plate": _rows(0.0)}, {"plate": 3}, {"plate": np.array([7])}),
            ClientUpload("b", {"plate": _rows(0.5)}, {"plate": 3}, {"plate": np.array([4])}),
        ],
        ServerSettings("concatenate", None, 1, 8, 0),
    ).bank
    uploads = [
        ClientUpload("a", {"plate": _rows(2.0, 5.0)}, {"plate": 3}, {"plate": np.array([2, 3])}),
        ClientUpload("b", {"plate": _rows(9.0)}, {"plate": 3}, {"plate": np.array([1])}),
        ClientUpload("c", {"plate": _rows()[:0]}, {"plate": 3}),  # found nothing uncovered: a valid reply
    ]
    result = run_round(uploads, ServerSettings("concatenate", None, 3, 8, 0), round_number=2, previous=first)
    bank = result.bank
    by_row = {
        float(row[0]): (str(client_id), int(local_row))
        for row, client_id, local_row in zip(bank.banks["plate"], bank.origin["plate"], bank.origin_row["plate"], strict=True)
    }
    # Rows inherited from round 1 keep their client and local row, never the previous-round placeholder.
    assert by_row == {0.0: ("a", 7), 0.5: ("b", 4), 2.0: ("a", 2), 5.0: ("a", 3), 9.0: ("b", 1)}
    assert PREVIOUS_ROUND not in set(bank.origin["plate"])
    assert result.report["round"] == 2
    assert result.report["broadcast_bytes"] == first.nbytes * 3
    assert bank.n_images == first.n_images


def test_strategy_options_reach_the_strategy():
    seen = {}

    @register_strategy("test_first_rows")
    def first_rows(parts, size):
        seen.update(parts.options)
        take = int(parts.options["rows_per_client"])
        clients = np.repeat(np.arange(len(parts.banks)), take)
        rows = np.tile(np.arange(take), len(parts.banks))
        return clients, rows

    try:
        settings = ServerSettings("test_first_rows", None, 1, 8, 0, options={"rows_per_client": 2})
        result = run_round([_upload("a", 0.0), _upload("b", 5.0)], settings)
        assert seen == {"rows_per_client": 2}
        assert result.report["contributions"]["plate"] == {"a": 2, "b": 2}
        assert result.bank.origin_row["plate"].tolist() == [0, 2, 0, 2]
    finally:
        STRATEGIES.pop("test_first_rows")


def test_settings_name_the_bad_parameter():
    with pytest.raises(ValueError, match="aggregation.strategy"):
        ServerSettings.from_run({"aggregation": {"strategy": "median"}, "coreset": {"projection_dim": 8}, "seed": 0})
    settings = ServerSettings.from_run(
        {
            "aggregation": {"strategy": "diversity", "global_bank_size": 5, "min_clients": 2, "options": {"x": 1}},
            "coreset": {"projection_dim": 16},
            "seed": 3,
        }
    )
    assert settings == ServerSettings("diversity", 5, 2, 16, 3, {"x": 1}, trust=TrustSettings(seed=3))


# --------------------------------------------------------------------------- denoising and folds


def test_denoising_client_drops_outlying_patches_before_k_center_and_weighs_its_rows(features):
    extracted, vectors = features
    settings = _client_settings(denoise="knn", denoise_share=0.25, denoise_radius=1, denoise_neighbours=1)
    local = client.select_local_coreset(extracted, settings)
    plain = client.select_local_coreset(extracted, _client_settings())
    for category, bank in local.banks.items():
        assert len(bank) == len(plain.banks[category]) == 6  # same budget, chosen among the kept 18 of 24
        assert local.weights[category].shape == (6,) and (local.weights[category] >= 1).all()
    assert plain.weights == {}
    again = client.LocalCoreset.from_arrays(local.to_arrays())
    np.testing.assert_array_equal(again.weights["plate"], local.weights["plate"])
    upload = client.build_upload(local, settings)
    np.testing.assert_array_equal(upload.weights["plate"], local.weights["plate"])
    assert "weight/plate" not in client.build_upload(plain, _client_settings()).to_arrays()
    bank = client.as_bank(local, "all")
    np.testing.assert_array_equal(bank.row_weights("fabric"), local.weights["fabric"])


def test_denoising_client_names_the_training_images_that_stand_out(tmp_path, caplog):
    # 8 images of a 2x4 grid, alike at each position; image 5 is off by a lot at three positions.
    rng = np.random.default_rng(1)
    rows = (np.arange(8)[None, :, None] * 10.0 + rng.normal(0, 0.1, (8, 8, 6))).astype(np.float32)
    rows[5, :3] += 50.0
    writer = PatchFeatureWriter(tmp_path / "plate.npy", dim=6, projection_dim=8, seed=0)
    writer.append(rows.reshape(-1, 6))
    keys = [f"plate/train/good/{i:03d}.png" for i in range(8)]
    extracted = ExtractedFeatures({"plate": writer.close()}, {"plate": keys}, {"plate": (2, 4)})
    settings = _client_settings(denoise="knn", denoise_radius=0, denoise_neighbours=1)
    with caplog.at_level("WARNING", logger=client.__name__):
        client.select_local_coreset(extracted, settings)
    flagged = [r.getMessage() for r in caplog.records if "stand out" in r.getMessage()]
    assert len(flagged) == 1 and "plate/train/good/005.png" in flagged[0]
    assert "004.png" not in flagged[0] and "1 of 8 training images" in flagged[0]


def test_uploads_name_the_half_of_the_images_each_row_came_from(features):
    extracted, _ = features
    settings = _client_settings(upload_folds=True)
    local = client.select_local_coreset(extracted, settings)
    upload = client.build_upload(local, settings)
    halves = client.image_folds(3, 0, "a", "plate")
    assert sorted(halves.tolist()) == [0, 0, 1]  # 3 images: 2 in fold 0, 1 in fold 1
    np.testing.assert_array_equal(upload.folds["plate"], halves[local.patch_source["plate"][:, 0]])
    assert client.build_upload(local, _client_settings()).folds == {}


def test_a_private_client_refuses_to_denoise(features):
    extracted, _ = features
    settings = client.ClientSettings.from_run(
        {
            "coreset": {"ratio": 0.25, "max_size": None, "projection_dim": 8, "num_starts": 1, "device": "cpu", "denoise": "lof"},
            "federation": {},
            "extraction": {"batch_size": 2, "num_workers": 0},
            "seed": 0,
            "privacy": {"enabled": True, "epsilon": 1.0},
        },
        "a",
    )
    with pytest.raises(ValueError, match="coreset.denoise needs raw patch vectors"):
        client.select_local_coreset(extracted, settings)
