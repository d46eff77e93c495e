"""The DP-CVAE: model, per-image DP-SGD and its accounting, GCR, reports, sampling a synthetic bank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedpatchcore.core.privacy import generative as gen
from fedpatchcore.core.privacy.accounting import PrivacyLedger

CATEGORIES = ("a", "b")
DIM = 6


def tiny_settings(**overrides) -> gen.CVAESettings:
    values = dict(
        latent_dim=3,
        hidden_dim=16,
        patches_per_image=4,
        position_grid=0,
        feature_scale=1.0,
        local_epochs=2,
        batch_images=8,
        learning_rate=1e-2,
        holdout_fraction=0.2,
        samples_per_category=64,
        bank_size=8,
        rounds=1,
    )
    values.update(overrides)
    return gen.CVAESettings(**values)


def tiny_data(
    settings: gen.CVAESettings, n_images: int = 40, seed: int = 0, shift: float = 3.0
) -> gen.GenerativeData:
    """Two categories of images, each image m patch vectors around its category's centre."""
    shape = gen.ModelShape.of(DIM, CATEGORIES, settings)
    rng = np.random.default_rng(seed)
    category = np.arange(n_images) % 2
    centres = np.stack([np.full(DIM, shift), np.full(DIM, -shift)])
    x = centres[category][:, None, :] + rng.normal(size=(n_images, settings.patches_per_image, DIM))
    cells = np.zeros((n_images, settings.patches_per_image), dtype=np.int64)
    conditions = np.stack(
        [gen.conditions_for(shape, CATEGORIES[k], cells[i]) for i, k in enumerate(category)]
    )
    keys = [f"img{i:03d}" for i in range(n_images)]
    return gen.GenerativeData(
        x.astype(np.float32),
        conditions,
        category.astype(np.int64),
        gen.is_held_out(keys, settings.holdout_fraction, 0, "c"),
    )


def shape_of(settings: gen.CVAESettings) -> gen.ModelShape:
    return gen.ModelShape.of(DIM, CATEGORIES, settings)


# --------------------------------------------------------------------------- settings and shapes


def test_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"privacy.dp_cvae: unknown keys \['latent'\]"):
        gen.CVAESettings.from_parameters({"latent": 3})
    with pytest.raises(ValueError, match="privacy.dp_cvae.bank_size"):
        gen.CVAESettings(samples_per_category=10, bank_size=20)
    with pytest.raises(ValueError, match="privacy.dp_cvae.averaging"):
        gen.CVAESettings(averaging="median")
    with pytest.raises(ValueError, match="privacy.dp_cvae.holdout_fraction"):
        gen.CVAESettings(holdout_fraction=1.0)


def test_conditions_are_one_hot_category_then_coarse_cell():
    settings = tiny_settings(position_grid=2)
    shape = shape_of(settings)
    assert shape.n_conditions == 2 + 4
    # 8 x 8 patch grid, 2 x 2 cells: (0, 0) -> cell 0, (0, 7) -> 1, (7, 0) -> 2, (7, 7) -> 3.
    cells = gen.coarse_cells(np.array([0, 7, 56, 63, 27]), (8, 8), 2)
    np.testing.assert_array_equal(cells, [0, 1, 2, 3, 0])
    conditions = gen.conditions_for(shape, "b", cells)
    np.testing.assert_array_equal(conditions[1], [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(conditions.sum(-1), 2.0)


def test_held_out_images_are_seeded_from_keys_and_leave_a_training_image():
    keys = [f"k{i}" for i in range(10)]
    held = gen.is_held_out(keys, 0.3, seed=1, client_id="c")
    assert held.sum() == 3
    np.testing.assert_array_equal(held, gen.is_held_out(keys, 0.3, seed=1, client_id="c"))
    assert gen.is_held_out(["only"], 0.5, 0, "c").tolist() == [False]


def test_model_weights_round_trip_and_misfits_name_the_weight():
    settings = tiny_settings()
    shape = shape_of(settings)
    weights = gen.initial_weights(shape, seed=0)
    np.testing.assert_array_equal(
        gen.model_arrays(gen.load_model(shape, weights))["decoder.4.bias"], weights["decoder.4.bias"]
    )
    assert gen.arrays_to_weights(gen.weights_to_arrays(weights)).keys() == weights.keys()
    # Public init: every party rebuilds the same round-1 model; the global RNG is untouched.
    state = torch.random.get_rng_state()
    np.testing.assert_array_equal(
        gen.initial_weights(shape, 0)["encoder.0.weight"], weights["encoder.0.weight"]
    )
    assert torch.equal(state, torch.random.get_rng_state())
    assert gen.ModelShape.from_weights(weights, CATEGORIES, settings) == shape
    with pytest.raises(ValueError, match="first layer has shape"):
        gen.ModelShape.from_weights(weights, ("a", "b", "c"), settings)
    broken = {**weights, "encoder.0.weight": weights["encoder.0.weight"][:, :2]}
    with pytest.raises(ValueError, match="'encoder.0.weight' has shape"):
        gen.load_model(shape, broken)
    with pytest.raises(ValueError, match=r"missing \['decoder.4.bias'\]"):
        gen.load_model(shape, {k: v for k, v in weights.items() if k != "decoder.4.bias"})


# --------------------------------------------------------------------------- GCR


def test_closed_form_mmd_to_a_gaussian_matches_monte_carlo():
    rng = np.random.default_rng(0)
    k, bandwidth2 = 3, 2.0
    z = torch.as_tensor(rng.normal(loc=0.7, size=(1, 5, k)), dtype=torch.float64)
    mean = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64)
    closed = float(gen.mmd2_to_gaussian(z, mean, bandwidth2)[0])

    def kernel(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * bandwidth2))

    y = rng.normal(size=(4000, k)) + mean.numpy()
    zs = z[0].numpy()
    y2 = rng.normal(size=(4000, k)) + mean.numpy()
    monte_carlo = kernel(zs, zs).mean() - 2 * kernel(zs, y).mean() + np.diag(kernel(y, y2)).mean()
    assert closed == pytest.approx(monte_carlo, abs=0.02)
    # Codes drawn from the prior itself are close; shifted codes are far (and MMD² <= 2).
    many = torch.as_tensor(rng.normal(size=(1, 400, k)), dtype=torch.float64) + mean
    assert float(gen.mmd2_to_gaussian(many, mean, bandwidth2)[0]) < 0.01
    far = float(gen.mmd2_to_gaussian(many + 10.0, mean, bandwidth2)[0])
    assert 0.5 < far <= gen.MMD2_BOUND


def test_an_images_loss_depends_on_that_image_only():
    """What per-image clipping needs: no term of the loss couples two images of a batch."""
    settings = tiny_settings(gcr_weight=1.0)
    model = gen.load_model(shape_of(settings), gen.initial_weights(shape_of(settings), 0))
    data = tiny_data(settings)
    x, c = torch.as_tensor(data.x[:5]), torch.as_tensor(data.conditions[:5])
    eps = torch.randn(
        5, settings.patches_per_image, settings.latent_dim, generator=torch.Generator().manual_seed(0)
    )
    before = gen.image_losses(model, x, c, eps, torch.zeros(3), settings)
    changed = x.clone()
    changed[2] += 50.0
    after = gen.image_losses(model, changed, c, eps, torch.zeros(3), settings)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(before[keep], after[keep])
    assert not torch.isclose(before[2], after[2])


def test_opacus_clips_each_image_as_one_example():
    """Per-sample gradients are per image (not per patch) and clipped to max_grad_norm together."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    settings = tiny_settings()
    model = GradSampleModule(gen.load_model(shape_of(settings), gen.initial_weights(shape_of(settings), 0)))
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=0.5,
        expected_batch_size=6,
    )
    data = tiny_data(settings)
    x, c = torch.as_tensor(data.x[:6]) * 20.0, torch.as_tensor(data.conditions[:6])
    eps = torch.zeros(6, settings.patches_per_image, settings.latent_dim)
    optimizer.zero_grad()
    gen.image_losses(model, x, c, eps, torch.zeros(3), settings).mean().backward()
    per_image = torch.cat([p.grad_sample.reshape(6, -1) for p in model.parameters()], dim=1)
    assert per_image.shape[0] == 6  # one gradient per image, each summing its 4 patches
    assert (per_image.norm(dim=1) > 0.5).all()  # large inputs: every image is clipped
    optimizer.pre_step()
    # No noise: the step's gradient is the mean of the clipped per-image gradients, norm <= C.
    total = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert float(total.norm()) <= 0.5 + 1e-5


# --------------------------------------------------------------------------- training and accounting
# noise_seed=0 in these tests: batch order and DP noise otherwise come from OS entropy, which made
# the trained models (and assertions on them) differ from run to run.


def test_loss_falls_on_tiny_data_without_dp():
    settings = tiny_settings(local_epochs=30)
    shape = shape_of(settings)
    data = tiny_data(settings)
    plan = gen.plan_training(int((~data.holdout).sum()), settings, epsilon=None, delta=1e-5, accountant="prv")
    result = gen.train_local(
        shape, gen.initial_weights(shape, 0), data, settings, plan, seed=0, client_id="c", round_number=1,
        noise_seed=0,
    )
    assert not plan.private and plan.epsilon is None and result.accountant_history == []
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_loss_falls_under_dp_sgd_and_opacus_accounts_the_planned_epsilon():
    settings = tiny_settings(local_epochs=10, batch_images=16, rounds=2)
    shape = shape_of(settings)
    data = tiny_data(settings, n_images=120)
    n_train = int((~data.holdout).sum())
    rounds = settings.rounds
    plan = gen.plan_training(n_train, settings, epsilon=8.0, delta=1e-5, accountant="prv")
    assert plan.sample_rate == 1 / math.ceil(n_train / 16)
    assert plan.epsilon == pytest.approx(8.0, abs=0.02)
    weights, history, losses = gen.initial_weights(shape, 0), [], []
    for round_number in range(1, rounds + 1):
        result = gen.train_local(
            shape, weights, data, settings, plan, seed=0, client_id="c", round_number=round_number, noise_seed=0
        )
        weights, history, losses = result.arrays, history + result.accountant_history, losses + result.losses
    # Opacus' own accountant, fed what its optimisers recorded over both rounds, reports the target.
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = history
    assert sum(steps for _, _, steps in history) == plan.steps_per_round * rounds
    assert accountant.get_epsilon(delta=1e-5) == pytest.approx(8.0, abs=0.05)
    assert losses[-1] < 0.7 * losses[0]


def test_the_plan_records_reports_then_dp_sgd_within_epsilon():
    settings = tiny_settings(averaging="trust", report_epsilon_share=0.2, rounds=3)
    plan = gen.plan_training(200, settings, epsilon=4.0, delta=1e-5, accountant="rdp")
    assert [name for name, *_ in plan.ledger.entries] == ["dp_cvae_reports", "dp_cvae_sgd"]
    assert plan.epsilon == pytest.approx(4.0, abs=0.02)
    # Opacus' own accountant agrees with the ledger on the composed ε.
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(z, q, steps) for _, z, q, steps in plan.ledger.entries]
    assert accountant.get_epsilon(delta=1e-5) == pytest.approx(plan.epsilon, rel=1e-6)
    budget = plan.budget()
    assert budget["steps"] == 3 * settings.local_epochs * math.ceil(200 / settings.batch_images)
    assert budget["unit"] == "image" and budget["clipping"].startswith("per image")


def test_fedavg_spends_nothing_on_reports():
    fedavg = gen.plan_training(
        200, tiny_settings(averaging="fedavg", rounds=2), epsilon=4.0, delta=1e-5, accountant="prv"
    )
    trust = gen.plan_training(
        200, tiny_settings(averaging="trust", rounds=2), epsilon=4.0, delta=1e-5, accountant="prv"
    )
    assert [e[0] for e in fedavg.ledger.entries] == ["dp_cvae_sgd"]
    assert fedavg.report_noise_multiplier is None
    assert trust.noise_multiplier > fedavg.noise_multiplier  # the reports cost budget
    # The reports alone spend their share of ε.
    share = PrivacyLedger("prv", 1e-5).record("reports", trust.report_noise_multiplier, 1.0, 2).epsilon()
    assert share == pytest.approx(0.1 * 4.0, abs=0.02)


def test_noise_is_fresh_unless_a_noise_seed_is_fixed():
    assert gen.noise_seed_for(None, "c", 1) != gen.noise_seed_for(None, "c", 1)
    assert gen.noise_seed_for(3, "c", 1) == gen.noise_seed_for(3, "c", 1)


def test_reports_are_per_category_and_noised_when_private():
    settings = tiny_settings(averaging="trust", report_clip=100.0)
    shape = shape_of(settings)
    data = tiny_data(settings, n_images=40)
    weights = gen.initial_weights(shape, 0)
    exact = gen.plan_training(32, settings, epsilon=None, delta=1e-5, accountant="prv")
    numbers = gen.client_reports(shape, weights, data, settings, exact, seed=0, client_id="c", round_number=1)
    assert sorted(numbers) == [
        "report.consistency.a",
        "report.consistency.b",
        "report.reconstruction.a",
        "report.reconstruction.b",
    ]
    held = np.flatnonzero(data.holdout)
    generator = torch.Generator().manual_seed(gen.derive_seed(0, "dp_cvae_report", "c", 1))
    eps = torch.randn(len(held), settings.patches_per_image, settings.latent_dim, generator=generator)
    error, codes = gen.held_out_codes(shape, weights, data.x[held], data.conditions[held], eps)
    mine = data.category[held] == 0
    assert numbers["report.reconstruction.a"] == pytest.approx(error[mine].mean(), rel=1e-6)
    pooled = codes[torch.as_tensor(mine)].reshape(1, -1, settings.latent_dim)
    expected = float(gen.mmd2_to_gaussian(pooled, torch.zeros(settings.latent_dim), settings.bandwidth2)[0])
    assert numbers["report.consistency.a"] == pytest.approx(expected, rel=1e-5)
    private = gen.plan_training(32, settings, epsilon=1.0, delta=1e-5, accountant="prv")
    noisy = gen.client_reports(
        shape, weights, data, settings, private, seed=0, client_id="c", round_number=1, noise_seed=0
    )
    assert noisy["report.reconstruction.a"] != pytest.approx(numbers["report.reconstruction.a"], rel=1e-6)
    assert all(0.0 <= v <= 100.0 for k, v in noisy.items() if "reconstruction" in k)
    assert all(0.0 <= v <= gen.MMD2_BOUND for k, v in noisy.items() if "consistency" in k)


def test_one_image_moves_the_pooled_consistency_by_at_most_4_over_n():
    """The sensitivity the report's noise is calibrated to (replace-one image, kernel values in [0, 1])."""
    n, m, k, bandwidth2 = 10, 4, 3, 100.0
    rng = np.random.default_rng(0)

    def pooled(codes):
        return float(
            gen.mmd2_to_gaussian(torch.as_tensor(codes).reshape(1, -1, k), torch.zeros(k), bandwidth2)[0]
        )

    typical = rng.normal(size=(n, m, k))
    # A large move: the others' codes far from the prior and from each other, one image's codes
    # brought onto the prior's mean (its m prior terms go from 0 to nearly 1: about 2/n).
    spread = 1e3 * rng.normal(size=(n, m, k))
    onto_prior = spread.copy()
    onto_prior[0] = 0.0
    changes = [abs(pooled(onto_prior) - pooled(spread))]
    for shift in (0.0, 3.0, 30.0):
        replaced = typical.copy()
        replaced[0] = shift + rng.normal(size=(m, k))
        changes.append(abs(pooled(replaced) - pooled(typical)))
    assert max(changes) <= 4.0 / n
    assert changes[0] > 1.5 / n  # one image does move it on the scale of 1/n: the noise must cover that


def test_encoder_drift_moves_the_latent_codes():
    settings = tiny_settings(local_epochs=30, gcr_weight=1.0)
    shape = shape_of(settings)
    data = tiny_data(settings)
    plan = gen.plan_training(int((~data.holdout).sum()), settings, epsilon=None, delta=1e-5, accountant="prv")
    start = gen.initial_weights(shape, 0)
    codes = {}
    for drift in (0.0, 4.0):
        result = gen.train_local(
            shape, start, data, settings, plan, seed=0, client_id="c", round_number=1, drift=drift, noise_seed=0
        )
        model = gen.load_model(shape, result.arrays)
        with torch.no_grad():
            codes[drift] = model.encode(torch.as_tensor(data.x), torch.as_tensor(data.conditions))[0].mean(
                dim=(0, 1)
            )
    target = gen.prior_mean(shape, 4.0, 0, "c")
    assert float(target.norm()) == pytest.approx(4.0)
    assert float(codes[0.0].norm()) < 1.0
    assert float((codes[4.0] - target).norm()) < float((codes[0.0] - target).norm()) - 2.0


# --------------------------------------------------------------------------- the synthetic bank


def test_synthetic_bank_has_the_real_dimension_and_no_real_row():
    settings = tiny_settings(local_epochs=20, position_grid=0, feature_scale=2.0)
    shape = shape_of(settings)
    data = tiny_data(settings)
    plan = gen.plan_training(int((~data.holdout).sum()), settings, epsilon=None, delta=1e-5, accountant="prv")
    weights = gen.train_local(
        shape, gen.initial_weights(shape, 0), data, settings, plan, seed=0, client_id="c", round_number=1,
        noise_seed=0,
    ).arrays
    bank, samples = gen.synthetic_bank(shape, weights, {"a": 20, "b": 20}, settings, seed=0)
    real = (data.x * settings.feature_scale).reshape(-1, DIM)
    for category, rows in bank.banks.items():
        assert rows.shape == (settings.bank_size, DIM) and rows.dtype == np.float32
        assert samples[category].shape == (settings.samples_per_category, DIM)
        distances = np.linalg.norm(rows[:, None, :] - real[None, :, :], axis=-1)
        assert distances.min() > 1e-3  # no bank row is a training row
        np.testing.assert_array_equal(bank.origin[category], "synthetic")
    assert bank.n_images == {"a": 20, "b": 20}
    # Samples in the backbone's units (x feature_scale), around each category's centre (±3 model units).
    assert samples["a"].mean() == pytest.approx(6.0, abs=1.0)
    assert samples["b"].mean() == pytest.approx(-6.0, abs=1.0)


def test_the_canary_audit_runs_on_the_dp_cvae_release():
    """The privacy issue's canary audit, through the variant's audit entry point: under its claim
    with DP-SGD; without noise the same training gives the canary away."""
    from fedpatchcore.core.privacy.release import PrivacySettings, audit_release

    cvae = {"latent_dim": 2, "hidden_dim": 8, "patches_per_image": 2, "position_grid": 0, "feature_scale": 1.0,
            "rounds": 1, "local_epochs": 2, "batch_images": 4, "holdout_fraction": 0.0}
    block = {"mechanism": "dp_cvae", "epsilon": 1.0, "clip_norm": 4.0,
             "canary_audit": {"enabled": True, "trials": 40, "images": 6, "dim": 3}}
    private = audit_release(PrivacySettings.from_parameters({**block, "enabled": True}, seed=0), 0.1, 0, cvae)
    silent = audit_release(PrivacySettings.from_parameters({**block, "enabled": False}, seed=0), 0.1, 0, cvae)
    assert private["mechanism"] == "dp_cvae" and private["trials"] == 40
    assert 0.9 < private["claimed_epsilon"] <= 1.0  # what the plan spends, within the target
    assert private["empirical_epsilon_lb"] <= private["claimed_epsilon"]
    assert silent["claimed_epsilon"] is None
    assert silent["empirical_epsilon_lb"] > private["claimed_epsilon"]  # no noise: the audit sees the canary
