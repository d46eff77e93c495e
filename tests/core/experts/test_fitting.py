"""The fitting protocol: several sites merge into exactly what one site holding everything fits."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.experts import fitting
from fedpatchcore.core.experts.model import ExpertSettings
from fedpatchcore.core.features.feature_store import PatchFeatureFile

GRID = (4, 5)  # patches per image (h, w)
DIM = 12
SETTINGS = ExpertSettings(projection_dim=4, grid=2, shift=1, clusters=(2, 3), lloyd_rounds=2, ridge=0.01, seed=0)


def _site(tmp_path, name: str, images: np.ndarray, shallow_dim: int = 5) -> dict[str, fitting.SiteFeatures]:
    """A site's feature file; the first ``shallow_dim`` channels play the shallow stage's."""
    path = tmp_path / f"{name}.npy"
    np.save(path, images.reshape(-1, DIM).astype(np.float16))
    return {"part": fitting.SiteFeatures(PatchFeatureFile(path, projection_dim=None), GRID, shallow_dim)}


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.2, (n, *GRID, DIM))
    images[:, 0:2, 0:2, :4] += 3.0  # a "part" at a fixed place: the top-left cell of a 2 x 2 grid
    return images


def _fit(sites: list[dict[str, fitting.SiteFeatures]], bank: np.ndarray, settings=SETTINGS):
    fit = fitting.start_fit([fitting.site_statistics(s, settings) for s in sites], {"part": bank}, settings)
    rounds = 0
    while fit.rounds_left > 1:
        fit = fitting.server_round(fit, [fitting.site_round(s, fit.broadcast(), settings) for s in sites])
        rounds += 1
    assert rounds == settings.lloyd_rounds
    return fitting.finish(fit, [fitting.site_round(s, fit.broadcast(), settings) for s in sites])["part"]


def test_merged_statistics_of_three_sites_fit_the_same_experts_as_one_site_holding_all(tmp_path):
    images = _images(11, 0)
    bank = images.reshape(-1, DIM)[::5].astype(np.float32)
    federated = _fit([_site(tmp_path, "a", images[:4]), _site(tmp_path, "b", images[4:5]), _site(tmp_path, "c", images[5:])], bank)
    central = _fit([_site(tmp_path, "all", images)], bank)
    fed, cen = federated.to_arrays("x"), central.to_arrays("x")
    assert sorted(fed) == sorted(cen)
    for key in cen:
        np.testing.assert_allclose(fed[key], cen[key], rtol=1e-7, atol=1e-9, err_msg=key)
    assert central.n_images == 11 and central.position.mean.shape == (2, 2, 4)
    # position and composition look at the shallow stage (5 -> 4 dims), global at the deep one (7 -> 4)
    assert central.projections.shallow.shape == (5, 4) and central.projections.deep.shape == (7, 4)


def test_messages_are_sums_only_and_round_trip(tmp_path):
    site = _site(tmp_path, "a", _images(3, 1))
    message = fitting.site_statistics(site, SETTINGS)
    assert message["part/global/n"] == 3 and message["part/position/n"].shape == (2, 2)
    assert message["part/shallow_dim"] == 5 and message["part/feature_dim"] == DIM
    assert fitting.message_nbytes(message) == sum(v.nbytes for v in message.values())
    fit = fitting.start_fit([message], {"part": _images(3, 1).reshape(-1, DIM)}, SETTINGS)
    again = fitting.ExpertFit.from_arrays(fit.to_arrays(), SETTINGS)
    assert again.rounds_left == SETTINGS.lloyd_rounds + 1
    np.testing.assert_array_equal(again.centroids["part"][3], fit.centroids["part"][3])
    with pytest.raises(ValueError, match="still to run"):
        fitting.finish(fit, [])
    experts = _fit([site], _images(3, 1).reshape(-1, DIM))
    back = fitting.experts_from_arrays(fitting.experts_to_arrays({"part": experts}))["part"]
    features = _images(2, 5).astype(np.float32)
    np.testing.assert_allclose(back.score(features).scores["position"], experts.score(features).scores["position"])


def test_one_image_fits_and_scores_without_nan(tmp_path):
    image = _images(1, 2)
    experts = _fit([_site(tmp_path, "one", image)], image.reshape(-1, DIM))
    outputs = experts.score(_images(3, 3).astype(np.float32))
    for values in [*outputs.scores.values(), *outputs.composition.values(), outputs.maps["position"]]:
        assert np.all(np.isfinite(values))
    assert outputs.maps["position"].shape == (3, 2, 2)
    # its own image is the closest thing to normal there is
    own = experts.score(image.astype(np.float32))
    assert own.scores["global"][0] < outputs.scores["global"].min()


def test_position_expert_finds_a_part_missing_from_its_place(tmp_path):
    good = _images(8, 4)
    experts = _fit([_site(tmp_path, "good", good)], good.reshape(-1, DIM))
    test = _images(2, 6)
    test[1, 0:2, 0:2, :4] -= 3.0  # the part is gone: background there
    outputs = experts.score(test.astype(np.float32))
    assert outputs.scores["position"][1] > 2 * outputs.scores["position"][0]
    cells = outputs.maps["position"][1]
    assert np.unravel_index(cells.argmax(), cells.shape) == (0, 0)  # the cell where the part belongs
