"""The DP release (core/privacy/release.py), the accountants, and the membership-inference audit's metrics."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from fedpatchcore.core.evaluation.membership_audit import attack_metrics, dp_auc_bound
from fedpatchcore.core.features.extraction import ExtractedFeatures
from fedpatchcore.core.features.feature_store import PatchFeatureWriter
from fedpatchcore.core.federation import client
from fedpatchcore.core.privacy import accounting
from fedpatchcore.core.privacy import release as privacy

DELTA = 1e-5


def _settings(**overrides) -> privacy.PrivacySettings:
    block = {
        "enabled": True,
        "epsilon": 2.0,
        "delta": DELTA,
        "clip_norm": 3.0,
        "patches_per_image": 4,
        "unit": "image",
        "accountant": "rdp",
        "noise_seed": 7,
        "reproducible_not_private": True,
        **overrides,
    }
    return privacy.PrivacySettings.from_parameters(block, seed=0)


# --------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("accountant", ["rdp", "prv", "analytic_gaussian"])
@pytest.mark.parametrize(("unit", "sensitivity"), [("image", 2 * 3.0 * math.sqrt(4)), ("patch", 2 * 3.0)])
def test_sigma_is_what_the_accountant_gives_for_epsilon_delta_and_sensitivity(accountant, unit, sensitivity):
    settings = _settings(unit=unit, accountant=accountant)
    assert settings.sensitivity == pytest.approx(sensitivity)
    if accountant == "analytic_gaussian":
        multiplier = dp_accounting.get_sigma_gaussian(2.0, DELTA)
    else:
        multiplier = get_noise_multiplier(
            target_epsilon=2.0, target_delta=DELTA, sample_rate=1.0, steps=1, accountant=accountant
        )
    assert settings.sigma == pytest.approx(multiplier * sensitivity, rel=1e-12)
    assert settings.budget()["sigma"] == settings.sigma


@pytest.mark.parametrize("accountant", ["rdp", "prv", "analytic_gaussian"])
def test_reported_epsilon_is_what_the_accountant_computes_from_sigma(accountant):
    settings = _settings(accountant=accountant, unit="image")
    budget = settings.budget({"plate": 30})
    multiplier = budget["sigma"] / settings.sensitivity
    if accountant == "analytic_gaussian":
        expected = dp_accounting.get_epsilon_gaussian(multiplier, DELTA)
    else:
        independent = create_accountant(accountant)
        independent.history = [(multiplier, 1.0, 1)]
        expected = independent.get_epsilon(delta=DELTA)
    assert budget["epsilon"] == pytest.approx(expected, rel=1e-9)
    # The calibration lands on the target from below (Opacus' search stops within 0.01 of it).
    assert 2.0 - 0.02 <= budget["epsilon"] <= 2.0 + 1e-9
    assert accounting.epsilon_spent(budget["sigma"], DELTA, settings.sensitivity, accountant) == pytest.approx(
        budget["epsilon"]
    )
    assert {"enabled", "epsilon", "delta", "unit", "sigma", "patches_per_image", "clip_norm", "rounds", "accountant"} <= set(
        budget
    )
    assert budget["rounds"] == 1 and budget["n_images"] == {"plate": 30}


@pytest.mark.parametrize("accountant", ["rdp", "prv", "analytic_gaussian"])
def test_two_releases_compose_to_a_larger_epsilon_than_one(accountant):
    sigma = accounting.sigma_for(2.0, DELTA, 1.0, accountant)
    once = accounting.epsilon_spent(sigma, DELTA, 1.0, accountant, releases=1)
    twice = accounting.epsilon_spent(sigma, DELTA, 1.0, accountant, releases=2)
    assert twice > once * 1.2
    # The same budget over two releases needs more noise per release.
    assert accounting.sigma_for(2.0, DELTA, 1.0, accountant, releases=2) > sigma
    ledger = accounting.PrivacyLedger(accountant, DELTA).record("round 1", sigma).record("round 2", sigma)
    assert ledger.epsilon() == pytest.approx(twice, rel=1e-6)


def test_ledger_leaves_room_for_a_dp_sgd_model_within_the_total_budget():
    ledger = _settings(accountant="rdp", epsilon=1.0).ledger()
    spent = ledger.epsilon()
    multiplier = ledger.noise_multiplier_within(3.0, sample_rate=0.1, steps=50)
    total = ledger.epsilon([*ledger.entries, ("model", multiplier, 0.1, 50)])
    assert spent < total <= 3.0 and total > 3.0 - 0.05
    assert ledger.opacus_accountant == "rdp"
    with pytest.raises(ValueError, match="subsampling"):
        accounting.PrivacyLedger("analytic_gaussian", DELTA).record("model", 1.0, sample_rate=0.1)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="privacy.unit"):
        _settings(unit="pixel")
    with pytest.raises(ValueError, match="privacy.accountant"):
        _settings(accountant="moments")
    with pytest.raises(ValueError, match="positive finite"):
        _settings(epsilon=float("inf"))
    with pytest.raises(ValueError, match="unknown keys"):
        privacy.PrivacySettings.from_parameters({"enabled": True, "epsilson": 1}, seed=0)
    off = privacy.PrivacySettings.from_parameters({"enabled": False, "epsilon": float("inf")}, seed=0)
    assert off.sigma == 0.0 and off.budget()["epsilon"] is None and off.budget()["enabled"] is False


# --------------------------------------------------------------------------- clipping and the release


def test_clipping_bounds_every_vector_and_leaves_short_ones_alone():
    rng = np.random.default_rng(0)
    vectors = (rng.normal(size=(500, 40)) * rng.uniform(0.01, 50, size=(500, 1))).astype(np.float32)
    clipped = privacy.clip_rows(vectors, 3.0)
    norms = np.linalg.norm(clipped.astype(np.float64), axis=1)
    assert (norms <= 3.0).all()
    short = np.linalg.norm(vectors, axis=1) <= 3.0
    assert short.any() and (~short).any()
    np.testing.assert_array_equal(clipped[short], vectors[short])
    np.testing.assert_allclose(norms[~short], 3.0, rtol=1e-5)
    # Directions are kept.
    cosine = (clipped * vectors).sum(1) / (norms * np.linalg.norm(vectors, axis=1))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)
    projected = privacy.public_transform(_settings(projection_dim=8), 40)(vectors)
    assert projected.shape == (500, 8) and (np.linalg.norm(projected.astype(np.float64), axis=1) <= 3.0).all()


@pytest.fixture
def features(tmp_path) -> tuple[ExtractedFeatures, dict[str, np.ndarray]]:
    """Two categories of 6 images on a 4x4 patch grid, patch norms well above the clip norm."""
    rng = np.random.default_rng(0)
    files, vectors = {}, {}
    for category in ("plate", "fabric"):
        rows = (10.0 * rng.normal(size=(6 * 16, 12))).astype(np.float32)
        writer = PatchFeatureWriter(tmp_path / f"{category}.npy", dim=12, projection_dim=8, seed=0)
        writer.append(rows)
        files[category] = writer.close()
        vectors[category] = files[category].gather(np.arange(len(rows)))  # as stored (float16)
    keys = {c: [f"{c}/train/good/{i}" for i in range(6)] for c in files}
    return ExtractedFeatures(files, keys, {c: (4, 4) for c in files}), vectors


def _client_settings(privacy_block: dict | None) -> client.ClientSettings:
    parameters = {
        "coreset": {"ratio": 0.5, "max_size": None, "projection_dim": 8, "num_starts": 1, "device": "cpu"},
        "federation": {},
        "extraction": {"batch_size": 2, "num_workers": 0},
        "seed": 0,
        "privacy": privacy_block,
    }
    return client.ClientSettings.from_run(parameters, "a")


PRIVATE = {
    "enabled": True,
    "epsilon": 4.0,
    "clip_norm": 3.0,
    "patches_per_image": 4,
    "accountant": "rdp",
    "noise_seed": 3,
    "reproducible_not_private": True,
}


def test_selection_only_ever_receives_noised_vectors(features, monkeypatch):
    extracted, raw = features
    received = []

    def spy(vectors, k, **kwargs):
        received.append(np.array(vectors, copy=True))
        return greedy(vectors, k, **kwargs)

    def raw_selection(*args, **kwargs):
        raise AssertionError("k-center ran on the raw feature file")

    greedy = client.greedy_kcenter
    monkeypatch.setattr(client, "greedy_kcenter", spy)
    monkeypatch.setattr(client, "select_coreset_streaming", raw_selection)
    settings = _client_settings(PRIVATE)
    local = client.select_local_coreset(extracted, settings)
    expected = client.release_local_rows(extracted, settings)  # the same release (fixed noise seed)

    assert len(received) == 2
    for category, seen in zip(("plate", "fabric"), received, strict=True):
        np.testing.assert_array_equal(seen, expected[category].rows)
        assert len(seen) == 6 * 4  # m rows per image, no more
        # No row that reached the selection is a raw or a merely clipped patch vector.
        for candidate in (raw[category], privacy.clip_rows(raw[category], 3.0)):
            gaps = np.linalg.norm(seen[:, None, :] - candidate[None, :, :], axis=2).min(axis=1)
            assert gaps.min() > 0.5 * settings.privacy.sigma
        # The coreset and what is uploaded are rows of the release (post-processing only).
        bank = local.banks[category]
        assert len(bank) == 12
        assert all(np.equal(seen, row).all(axis=1).any() for row in bank)
        np.testing.assert_array_equal(client.build_upload(local, settings).banks[category], bank)
    # Quality is measured on raw images: not reported under DP; the budget is.
    assert not any(name.startswith("quality.") for name in local.numbers)
    assert local.numbers["privacy.sigma"] == pytest.approx(settings.privacy.sigma)


def test_release_is_clipped_vectors_at_data_independent_positions_plus_sigma_noise(features, tmp_path):
    extracted, raw = features
    settings = _settings(**PRIVATE)
    released = privacy.release_category(
        extracted.files["plate"], extracted.image_keys["plate"], (4, 4), settings, "a", "plate"
    )
    image, y, x = released.source.T
    assert np.bincount(image).tolist() == [4] * 6  # m positions per image
    clean = privacy.clip_rows(raw["plate"][image * 16 + y * 4 + x], 3.0)
    noise = released.rows - clean
    assert noise.std() == pytest.approx(settings.sigma, rel=0.1)
    assert abs(noise.mean()) < 0.2 * settings.sigma
    # Other pixel values, same images: the same positions.
    other = PatchFeatureWriter(tmp_path / "other.npy", dim=12, projection_dim=None, seed=0)
    other.append(np.ones((6 * 16, 12), dtype=np.float32))
    again = privacy.release_category(other.close(), extracted.image_keys["plate"], (4, 4), settings, "a", "plate")
    np.testing.assert_array_equal(again.source, released.source)
    # Without a noise seed the noise differs on every call (it must not be reproducible from parameters).
    fresh = _settings(**{**PRIVATE, "noise_seed": None})
    first, second = (
        privacy.release_category(extracted.files["plate"], extracted.image_keys["plate"], (4, 4), fresh, "a", "plate")
        for _ in range(2)
    )
    assert not np.allclose(first.rows, second.rows)


def test_disabled_privacy_leaves_the_coreset_exactly_as_before(features):
    extracted, _ = features
    before = client.select_local_coreset(extracted, _client_settings(None))
    after = client.select_local_coreset(extracted, _client_settings({"enabled": False, "epsilon": 1.0}))
    for category in before.banks:
        np.testing.assert_array_equal(before.banks[category], after.banks[category])
        np.testing.assert_array_equal(before.patch_source[category], after.patch_source[category])
    assert before.numbers == after.numbers
    assert client.privacy_budget(after, _client_settings(None))["enabled"] is False


def _uneven_features(tmp_path) -> ExtractedFeatures:
    """8 ``plate`` images and 2 ``fabric`` images on a 4x4 grid (32 and 8 released rows at m = 4)."""
    rng = np.random.default_rng(1)
    files, keys = {}, {}
    for category, n_images in (("plate", 8), ("fabric", 2)):
        writer = PatchFeatureWriter(tmp_path / f"uneven_{category}.npy", dim=12, projection_dim=8, seed=0)
        writer.append((10.0 * rng.normal(size=(n_images * 16, 12))).astype(np.float32))
        files[category] = writer.close()
        keys[category] = [f"{category}/train/good/{i}" for i in range(n_images)]
    return ExtractedFeatures(files, keys, {c: (4, 4) for c in files})


def _private_sizes(tmp_path, coreset: dict, fairness: dict | None = None) -> dict[str, int]:
    parameters = {
        "coreset": {"ratio": 0.5, "max_size": None, "projection_dim": 8, "num_starts": 1, "device": "cpu", **coreset},
        "federation": {},
        "extraction": {"batch_size": 2, "num_workers": 0},
        "seed": 0,
        "privacy": PRIVATE,
        "fairness": fairness,
    }
    local = client.select_local_coreset(_uneven_features(tmp_path), client.ClientSettings.from_run(parameters, "qc"))
    return {category: len(bank) for category, bank in local.banks.items()}


def test_a_private_coreset_keeps_the_ratio_of_the_released_rows(tmp_path):
    assert _private_sizes(tmp_path, {}) == {"plate": 16, "fabric": 4}  # 0.5 x 32, 0.5 x 8


def test_a_private_coreset_keeps_coreset_total_size(tmp_path):
    # One budget of 10 rows over the client's categories, split ∝ released rows (32 : 8).
    assert _private_sizes(tmp_path, {"total_size": 10}) == {"plate": 8, "fabric": 2}


def test_a_private_coreset_follows_the_fairness_quotas(tmp_path):
    # The 20 rows the ratio keeps, shared equally: fabric gives all 8 it released, plate the other 12.
    equal = {"mode": "equal", "group_by": "category", "min_share": 0.1}
    assert _private_sizes(tmp_path, {}, equal) == {"plate": 12, "fabric": 8}


def test_release_parameters_ignore_the_audit_and_a_disabled_release():
    assert privacy.release_parameters({"enabled": False, "unit": "patch", "epsilon": 3}) == {"enabled": False}
    on = {"enabled": True, "epsilon": 3, "audit": {"enabled": True}}
    assert privacy.release_parameters(on) == {"enabled": True, "epsilon": 3}


# --------------------------------------------------------------------------- the audit


def test_attack_metrics_on_separable_and_on_identical_scores():
    separated = attack_metrics([5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0])
    assert separated["auc"] == 1.0 and separated["tpr_at_fpr_0.01"] == 1.0
    rng = np.random.default_rng(0)
    chance = attack_metrics(rng.normal(size=2000), rng.normal(size=2000))
    assert abs(chance["auc"] - 0.5) < 3 * chance["auc_std_error"]
    assert chance["tpr_at_fpr_0.01"] < 0.05


def test_auc_bound_grows_with_epsilon_and_is_one_without_dp():
    bounds = [dp_auc_bound(e, DELTA) for e in (0.5, 1, 2, 4, 8)]
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
    assert 0.5 < bounds[0] < 0.65 and dp_auc_bound(None, None) == 1.0


def test_ledger_reads_what_an_opacus_privacy_engine_spent():
    import torch
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    ledger = accounting.PrivacyLedger("rdp", DELTA)
    engine = PrivacyEngine(accountant=ledger.opacus_accountant)
    model, optimizer, loader = engine.make_private_with_epsilon(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=loader,
        target_epsilon=2.0,
        target_delta=DELTA,
        epochs=1,
        max_grad_norm=1.0,
    )
    for features, target in loader:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(features), target).backward()
        optimizer.step()
    ledger.record_opacus("model", engine)
    assert ledger.epsilon() == pytest.approx(engine.get_epsilon(DELTA), rel=1e-9)
    # The patch release and the model of the same client compose to more than either alone.
    both = _settings(accountant="rdp", epsilon=1.0).ledger().record_opacus("model", engine)
    assert both.epsilon() > max(1.0 - 0.02, ledger.epsilon())


def test_a_client_charges_its_ledger_before_releasing_and_a_second_release_past_the_cap_is_refused(features, tmp_path):
    from fedpatchcore.core.privacy.ledger import BudgetExceeded

    extracted, _ = features
    block = {**PRIVATE, "noise_seed": None, "reproducible_not_private": False, "epsilon": 2.0,
             "ledger_dir": str(tmp_path), "max_epsilon": 2.5}
    settings = _client_settings(block)
    local = client.select_local_coreset(extracted, settings)
    budget = client.privacy_budget(local, settings)
    assert 1.98 <= budget["epsilon"] <= 2.0 and budget["releases_composed"] == 1 and budget["private"] is True
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert sum('"kind": "release"' in line for line in lines) == 2  # one per category
    # The same images again (another variant, a re-run): 2 ⊕ 2 ≈ 2.9 > 2.5, refused before anything is released.
    calls = []
    original = client.release_category
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client, "release_category", lambda *a, **k: calls.append(a) or original(*a, **k))
        with pytest.raises(BudgetExceeded, match="site 'a'"):
            client.select_local_coreset(extracted, settings)
    assert calls == [] and (tmp_path / "a.jsonl").read_text().splitlines() == lines
