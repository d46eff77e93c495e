"""The private summary bank: DP-Lloyd sums, the server's update, distributed noise, post-processing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedpatchcore.core.features.feature_store import PatchFeatureWriter
from fedpatchcore.core.privacy import secure_sum
from fedpatchcore.core.privacy.release import (
    PrivacySettings,
    noise_generator,
    summary_share,
    summary_statistics,
)
from fedpatchcore.core.privacy.summary import (
    Statistics,
    SummaryCategory,
    SummarySettings,
    centres_from_release,
    image_statistics,
    lloyd_update,
    public_centres,
)
from fedpatchcore.core.scoring.summary import scaled_distances

SETTINGS = SummarySettings(centres=2, rounds=2, residual_clip=2.0, contribution_clip=10.0, min_count=2.0)


def test_contributions_by_hand_and_clipped_as_a_whole():
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    # One image, two patches: (1, 0) -> centre 0 (residual (1, 0)); (10, 3) -> centre 1 (residual (0, 3), clipped to 2).
    patches = np.array([[[1.0, 0.0], [10.0, 3.0]]])
    stats = image_statistics(patches, centres, residual_clip=2.0, contribution_clip=10.0)
    np.testing.assert_allclose(stats.residual_sum, [[1 / (2 * 2), 0.0], [0.0, 2 / (2 * 2)]])
    np.testing.assert_allclose(stats.count, [0.5, 0.5])
    np.testing.assert_allclose(stats.squared_sum, [1 / (2 * 4), 4 / (2 * 4)])
    assert stats.clipped == 0
    # The whole contribution (norm √(0.25² + 0.5² + 0.5² + 0.5² + 0.125² + 0.5²)) is scaled down to B.
    length = np.linalg.norm(stats.to_vector())
    small = image_statistics(patches, centres, residual_clip=2.0, contribution_clip=0.5)
    assert small.clipped == 1
    np.testing.assert_allclose(small.to_vector(), stats.to_vector() * 0.5 / length)


def test_replacing_any_image_moves_the_sums_by_at_most_two_b():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 6)) * 3
    data = rng.normal(size=(20, 8, 6)) * 4
    settings = SummarySettings(centres=5, residual_clip=3.0, contribution_clip=0.3)
    base = image_statistics(data, centres, settings.residual_clip, settings.contribution_clip).to_vector()
    for trial in range(5):
        other = data.copy()
        other[trial] = rng.normal(size=(8, 6)) * 100  # anything at all
        moved = image_statistics(other, centres, settings.residual_clip, settings.contribution_clip).to_vector()
        assert np.linalg.norm(moved - base) <= settings.sensitivity + 1e-9


def test_without_noise_a_round_is_lloyds_step_with_the_spread_around_the_new_centre():
    centres = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    patches = np.array([[[0.5, 0.0], [-0.5, 1.0]], [[10.0, 1.0], [10.0, -0.2]]])
    pooled = image_statistics(patches, centres, 5.0, 100.0)
    state = SummaryCategory(centres, np.ones(2, np.float32), np.ones(2))
    following, bank = lloyd_update(state, pooled, sigma=0.0, settings=SummarySettings(centres=2, residual_clip=5.0))
    np.testing.assert_allclose(following.centres, [[0.0, 0.5], [10.0, 0.4]], atol=1e-6)
    cell0 = np.array([[0.5, 0.0], [-0.5, 1.0]])
    expected_radius = np.sqrt(((cell0 - [0.0, 0.5]) ** 2).sum(1).mean())
    assert bank.radius[0] == pytest.approx(expected_radius, rel=1e-5)
    np.testing.assert_allclose(bank.count, [1.0, 1.0])


def test_noisy_counts_under_the_threshold_drop_their_centre_and_noise_shrinks_the_move():
    centres = np.zeros((3, 4), dtype=np.float32)
    pooled = Statistics(np.array([[10.0, 0, 0, 0], [0.01, 0, 0, 0], [0, 0, 0, 0]]), np.array([50.0, 50.0, 1.0]), np.ones(3))
    state = SummaryCategory(centres, np.array([7.0, 7.0, 7.0], np.float32), np.ones(3))
    settings = SummarySettings(centres=3, residual_clip=1.0)
    following, bank = lloyd_update(state, pooled, sigma=1.0, settings=settings)
    moved = following.centres
    assert len(bank) == 2  # count 1 < 2σ: dropped
    # Centre 0: mean residual 10/50 = 0.2, noise d·(σR/N)² = 4/2500: moved by (1 - 0.0016/0.04)·0.2.
    assert moved[0, 0] == pytest.approx(0.96 * 0.2, rel=1e-5)
    assert moved[1, 0] == 0.0  # a mean residual (0.0002) far under its noise (0.04) is no move at all
    assert moved[2].tolist() == [0, 0, 0, 0] and following.radius[2] == 7.0  # dropped: stays, keeps its radius
    # No centre passes: the bank keeps them all where they were (something to score against).
    starved = Statistics(np.zeros((3, 4)), np.array([0.5, -1.0, 1.0]), np.ones(3))
    following, bank = lloyd_update(state, starved, sigma=1.0, settings=settings)
    assert len(bank) == 3 and bank.radius.tolist() == [7.0, 7.0, 7.0]


def test_the_upload_is_rebuilt_byte_for_byte_from_the_release_alone(tmp_path):
    """What the server and scoring use is post-processing: a process holding only the released
    sums and public values makes the same bank, byte for byte."""
    rng = np.random.default_rng(1)
    public = public_centres(rng.normal(size=(40, 6)).astype(np.float32), SETTINGS, seed=0)
    block = {"enabled": True, "mechanism": "summary", "epsilon": 4.0, "accountant": "rdp",
             "summary": {"centres": 2, "rounds": 2, "residual_clip": 2.0, "contribution_clip": 10.0}}
    settings = PrivacySettings.from_parameters(block, seed=0)
    files, keys = {}, {}
    for site in ("a", "b"):
        writer = PatchFeatureWriter(tmp_path / f"{site}.npy", dim=6, projection_dim=None, seed=0)
        writer.append(rng.normal(size=(5 * 4, 6)).astype(np.float32))
        files[site] = writer.close()
        keys[site] = [f"plate/{site}/{i}" for i in range(5)]
    state, released = public, []
    for round_number in (1, 2):
        shares = [
            summary_share(
                summary_statistics({"plate": files[s]}, {"plate": 5}, {"plate": (2, 2)}, {"plate": state.centres}, settings),
                settings, {"plate": 2}, client_id=s, round_number=round_number, image_keys={"plate": keys[s]},
            )["plate"]
            for s in ("a", "b")
        ]
        pooled = secure_sum.pooled_sum(shares)
        released.append(pooled)
        state, bank = lloyd_update(state, Statistics.from_vector(pooled, 2, 6), settings.sigma, settings.summary)
    np.savez(
        tmp_path / "release.npz", start=public.centres, radius=public.radius, count=public.count,
        round_1=released[0], round_2=released[1],
    )
    (tmp_path / "public.json").write_text(json.dumps({"sigma": settings.sigma, "summary": block["summary"]}))
    script = f"""
import json, numpy as np
from fedpatchcore.core.privacy.summary import SummaryCategory, SummarySettings, centres_from_release
public = json.load(open({str(tmp_path / 'public.json')!r}))
release = np.load({str(tmp_path / 'release.npz')!r})
start = SummaryCategory(release["start"], release["radius"], release["count"])
bank = centres_from_release(start, [release["round_1"], release["round_2"]], public["sigma"],
                            SummarySettings.from_parameters(public["summary"]))
np.savez({str(tmp_path / 'rebuilt.npz')!r}, centres=bank.centres, radius=bank.radius, count=bank.count)
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    rebuilt = np.load(tmp_path / "rebuilt.npz")
    assert rebuilt["centres"].tobytes() == bank.centres.tobytes()
    assert rebuilt["radius"].tobytes() == bank.radius.tobytes()
    assert rebuilt["count"].tobytes() == bank.count.tobytes()
    assert centres_from_release(public, released, settings.sigma, settings.summary).centres.tobytes() == bank.centres.tobytes()


def test_noise_shares_add_up_to_one_release_of_sigma_even_with_dropouts():
    rng = np.random.default_rng(0)
    sigma, clients, dropouts = 2.0, 5, 1
    shares = np.stack([secure_sum.noise_share(np.zeros(20000), sigma, clients, dropouts, rng) for _ in range(clients)])
    assert shares[0].std() == pytest.approx(sigma / np.sqrt(clients - dropouts), rel=0.03)
    assert shares[:-1].sum(0).std() == pytest.approx(sigma, rel=0.03)  # one client dropped: still σ
    assert shares.sum(0).std() > sigma
    with pytest.raises(ValueError, match="max_dropouts=5 leaves no client"):
        secure_sum.share_sigma(sigma, 5, 5)


def test_two_releases_at_different_epsilon_never_share_noise():
    """a = x + σ_A·z_A and b = x + σ_B·z_B with z_A, z_B independent: solving them as if the noise
    were shared (x = (σ_B·a − σ_A·b)/(σ_B − σ_A)) gives noise back, not x."""
    x = np.random.default_rng(5).normal(size=(400, 8)).astype(np.float32)
    releases = {}
    for epsilon in (1.0, 4.0):
        settings = PrivacySettings.from_parameters(
            {"enabled": True, "epsilon": epsilon, "clip_norm": 3.0, "patches_per_image": 1, "accountant": "rdp",
             "noise_seed": 0, "reproducible_not_private": True},
            seed=0,
        )
        noise = noise_generator(settings, "client", "plate", "images").normal(0.0, settings.sigma, size=x.shape)
        releases[epsilon] = (x + noise, settings.sigma)
        # The same release recomputed is the same (reproducible), as it must be.
        again = noise_generator(settings, "client", "plate", "images").normal(0.0, settings.sigma, size=x.shape)
        np.testing.assert_array_equal(noise, again)
    (a, sigma_a), (b, sigma_b) = releases[1.0], releases[4.0]
    solved = (sigma_b * a - sigma_a * b) / (sigma_b - sigma_a)
    assert np.abs(solved - x).mean() > sigma_b  # nowhere near x
    correlation = np.corrcoef((a - x).ravel(), (b - x).ravel())[0, 1]
    assert abs(correlation) < 0.05  # not affine images of one noise draw


def test_a_fixed_noise_seed_needs_the_not_private_flag():
    with pytest.raises(ValueError, match="reproducible_not_private: true"):
        PrivacySettings.from_parameters({"enabled": True, "noise_seed": 0}, seed=0)
    settings = PrivacySettings.from_parameters({"enabled": True, "noise_seed": 0, "reproducible_not_private": True}, seed=0)
    assert settings.budget()["private"] is False
    assert PrivacySettings.from_parameters({"enabled": True}, seed=0).budget()["private"] is True


def test_scaled_distance_is_the_distance_over_the_radius_of_the_closest_cell():
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    radius = np.array([1.0, 4.0])
    patches = np.array([[3.0, 0.0], [8.0, 0.0], [10.0, 0.0]])
    # (3,0): 3/1 = 3 vs 7/4 = 1.75; (8,0): 8 vs 0.5; (10,0): 10 vs 0.
    np.testing.assert_allclose(scaled_distances(patches, centres, radius), [1.75, 0.5, 0.0])
    with pytest.raises(ValueError, match="without centres"):
        scaled_distances(patches, np.empty((0, 2)), np.empty(0))
    with pytest.raises(ValueError, match="positive radius"):
        scaled_distances(patches, centres, np.array([1.0, 0.0]))
