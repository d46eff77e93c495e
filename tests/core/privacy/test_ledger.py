"""The persistent per-site ledger: releases of the same images compose, a release past the cap is refused."""

from __future__ import annotations

import json

import pytest

from fedpatchcore.core.privacy import accounting
from fedpatchcore.core.privacy.ledger import (
    BudgetExceeded,
    Mechanism,
    SiteLedger,
    image_set_id,
    mechanisms_from_opacus,
)
from fedpatchcore.core.privacy.release import PrivacySettings, charge_release

DELTA = 1e-5
KEYS = [f"plate/train/good/{i:04d}" for i in range(6)]


def _z(epsilon: float, steps: int = 1) -> float:
    return accounting.noise_multiplier_for(epsilon, DELTA, "rdp", steps=steps)


def test_releases_of_the_same_images_compose_across_sites_files_and_ledger_objects(tmp_path):
    z = _z(1.0)
    first = SiteLedger(tmp_path, "metal", "rdp", DELTA).charge(KEYS, [Mechanism("rows", z)], label="federated")
    assert first.epsilon == pytest.approx(accounting.epsilon_for(z, DELTA, "rdp"))
    # Another variant releases the same images under another site name (the centralized baseline),
    # then a fresh ledger object (the next run) releases them again: everything composes.
    SiteLedger(tmp_path, "all", "rdp", DELTA).charge(KEYS, [Mechanism("rows", z)], label="centralized")
    third = SiteLedger(tmp_path, "metal", "rdp", DELTA).charge(KEYS[:3], [Mechanism("rows", z)], label="rerun")
    assert third.epsilon == pytest.approx(accounting.epsilon_for(z, DELTA, "rdp", steps=3), rel=1e-6)
    assert len(third.releases) == 3
    # Images released twice only are less exposed than the three released three times.
    assert SiteLedger(tmp_path, "x", "rdp", DELTA).spent(KEYS[3:]).epsilon == pytest.approx(
        accounting.epsilon_for(z, DELTA, "rdp", steps=2), rel=1e-6
    )
    assert SiteLedger(tmp_path, "x", "rdp", DELTA).spent(["never/released"]).epsilon == 0.0


def test_the_ledger_is_append_only_and_keys_releases_by_image_set(tmp_path):
    ledger = SiteLedger(tmp_path, "metal", "rdp", DELTA)
    ledger.charge(KEYS, [Mechanism("rows", _z(2.0))], label="a")
    before = (tmp_path / "metal.jsonl").read_text()
    ledger.charge(KEYS, [Mechanism("summary", _z(2.0, 2), steps=2)], label="b")
    after = (tmp_path / "metal.jsonl").read_text()
    assert after.startswith(before)  # earlier lines untouched
    records = [json.loads(line) for line in after.splitlines()]
    assert [r["kind"] for r in records] == ["images", "release", "release"]  # the image set once
    assert records[0]["id"] == image_set_id(reversed(KEYS)) and records[0]["keys"] == sorted(KEYS)
    assert records[2]["mechanisms"] == [{"name": "summary", "noise_multiplier": _z(2.0, 2), "sample_rate": 1.0, "steps": 2}]


def test_a_release_past_max_epsilon_is_refused_naming_the_site_and_what_was_spent(tmp_path):
    ledger = SiteLedger(tmp_path, "metal", "rdp", DELTA, max_epsilon=2.5)
    ledger.charge(KEYS, [Mechanism("rows", _z(2.0))], label="federated plate")
    lines = (tmp_path / "metal.jsonl").read_text()
    with pytest.raises(BudgetExceeded, match=r"site 'metal'.*max_epsilon=2\.5.*already spent on them: ε=(1\.99|2)\b.*federated plate"):
        ledger.charge(KEYS[:1], [Mechanism("rows", _z(2.0))], label="federated_iid plate")
    assert (tmp_path / "metal.jsonl").read_text() == lines  # nothing written for a refused release
    # Other images of the site still have room.
    SiteLedger(tmp_path, "metal", "rdp", DELTA, max_epsilon=2.5).charge(["plate/other"], [Mechanism("rows", _z(2.0))])


def test_a_reproducible_release_recomputed_is_recorded_once_and_fresh_noise_always_composes(tmp_path):
    settings = PrivacySettings.from_parameters(
        {"enabled": True, "epsilon": 2.0, "accountant": "rdp", "ledger_dir": str(tmp_path), "noise_seed": 3,
         "reproducible_not_private": True},
        seed=0,
    )
    once = charge_release(settings, "metal", {"plate": KEYS}, "federated")["plate"]
    again = charge_release(settings, "metal", {"plate": KEYS}, "federated")["plate"]
    assert once.epsilon == pytest.approx(again.epsilon) and not again.private
    fresh = PrivacySettings.from_parameters(
        {"enabled": True, "epsilon": 2.0, "accountant": "rdp", "ledger_dir": str(tmp_path)}, seed=0
    )
    charge_release(fresh, "metal", {"plate": KEYS}, "run 2")
    last = charge_release(fresh, "metal", {"plate": KEYS}, "run 3")["plate"]
    assert len(last.releases) == 3 and last.epsilon > 2 * once.epsilon * 0.9


def test_the_patch_unit_is_charged_per_image_with_the_exact_gaussian_epsilon(tmp_path):
    patch = PrivacySettings.from_parameters(
        {"enabled": True, "unit": "patch", "epsilon": 1.0, "patches_per_image": 16, "accountant": "prv",
         "ledger_dir": str(tmp_path)},
        seed=0,
    )
    image_epsilon = patch.image_epsilon()
    # Replacing an image moves its 16 vectors: sensitivity 2C·4, noise multiplier z/4.
    assert image_epsilon == pytest.approx(accounting.epsilon_for(patch.noise_multiplier / 4, 1e-5, "prv"), rel=1e-6)
    assert 4.5 < image_epsilon < 4.8 < 16 * 1.0  # far below group privacy's m·ε
    spent = charge_release(patch, "metal", {"plate": KEYS}, "patch")["plate"]
    assert spent.epsilon == pytest.approx(image_epsilon, rel=1e-6)
    budget = patch.budget({"plate": 6}, spent)
    assert budget["release_epsilon"] == pytest.approx(1.0, abs=0.02) and budget["release_image_epsilon"] == image_epsilon


def test_a_dp_sgd_model_reports_into_the_same_ledger():
    import torch
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
    engine = PrivacyEngine(accountant="rdp")
    module = torch.nn.Linear(3, 1)
    model, optimizer, loader = engine.make_private(
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        data_loader=torch.utils.data.DataLoader(data, batch_size=8),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    for features, target in loader:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(features), target).backward()
        optimizer.step()
    ledger = SiteLedger(None, "metal", "rdp", DELTA)
    ledger.charge(KEYS, [Mechanism("rows", _z(1.0))], label="rows")
    both = ledger.charge(KEYS, mechanisms_from_opacus("dp_cvae", engine), label="model")
    assert both.epsilon > max(1.0 - 0.02, engine.get_epsilon(DELTA))
