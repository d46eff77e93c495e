"""Fair quotas among groups, where the server and a multi-category client apply them, fairness
metrics on hand-made scores, and the training-fraction subsampling of the imbalance experiment."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.banks import ClientUpload
from fedpatchcore.core.data.index import subsample_training
from fedpatchcore.core.data.types import Sample
from fedpatchcore.core.evaluation.metrics import fairness_metrics, group_spread
from fedpatchcore.core.federation import client
from fedpatchcore.core.federation.aggregation import aggregate
from fedpatchcore.core.federation.fairness import FairnessSettings, group_quotas
from fedpatchcore.core.federation.server import ServerSettings, run_round
from fedpatchcore.core.reporting.experiments import experiment_table

# Three big groups and a small one, as after cutting one category to 10% of its images.
SIZES = {"a": 24, "b": 24, "c": 24, "small": 2}
CANDIDATES = {"a": 600, "b": 600, "c": 600, "small": 50}


# --------------------------------------------------------------------------- quotas


def test_none_follows_the_candidate_rows_as_a_plain_union_would():
    quotas = group_quotas(SIZES, CANDIDATES, 370, "none")
    assert quotas == {"a": 120, "b": 120, "c": 120, "small": 10}  # 50 of 1850 rows -> 10 of 370
    assert list(quotas) == list(SIZES)


def test_proportional_follows_the_images_with_a_floor_of_min_share():
    # 2 of 74 images would give the small group 10.8 of 400 rows; the floor gives it 40.
    quotas = group_quotas(SIZES, CANDIDATES, 400, "proportional", min_share=0.1)
    assert quotas == {"a": 120, "b": 120, "c": 120, "small": 40}
    # Without a floor it is plain largest-remainder ∝ images (ideal 129.7 x3, 10.8: remainders .73 .73 .73 .81).
    assert group_quotas(SIZES, CANDIDATES, 400, "proportional", min_share=0.0) == {"a": 130, "b": 130, "c": 129, "small": 11}
    # A floor larger than an equal share is capped at budget // groups ...
    plenty = dict.fromkeys(SIZES, 600)
    assert group_quotas(SIZES, plenty, 400, "proportional", min_share=0.9) == dict.fromkeys(SIZES, 100)
    # ... and at a group's candidates (it gives its 50 rows, the others share the rest ∝ images).
    assert group_quotas(SIZES, CANDIDATES, 400, "proportional", min_share=0.9) == {"a": 117, "b": 117, "c": 116, "small": 50}


def test_equal_gives_every_group_the_same_quota_exactly():
    assert group_quotas(SIZES, CANDIDATES, 200, "equal") == dict.fromkeys(SIZES, 50)
    assert group_quotas(SIZES, CANDIDATES, 202, "equal") == {"a": 51, "b": 51, "c": 50, "small": 50}


@pytest.mark.parametrize("mode", ["none", "proportional", "equal"])
def test_a_short_group_gives_what_it_has_and_the_rest_is_redistributed(mode):
    candidates = {**CANDIDATES, "small": 10}
    quotas = group_quotas(SIZES, candidates, 400, mode, min_share=0.1)
    assert sum(quotas.values()) == 400
    assert all(quotas[g] <= candidates[g] for g in SIZES)
    if mode != "none":
        assert quotas["small"] == 10  # its share (>= 40) is more than it has
        assert quotas["a"] == quotas["b"] == quotas["c"] == 130  # the 30 left over go to the others
    # Budget beyond every candidate: everything is kept.
    assert group_quotas(SIZES, candidates, 10_000, mode, min_share=0.1) == candidates


def test_redistribution_goes_on_until_nobody_can_take_more():
    quotas = group_quotas(SIZES, {"a": 40, "b": 60, "c": 600, "small": 10}, 400, "equal")
    assert quotas == {"a": 40, "b": 60, "c": 290, "small": 10}
    # A group of size 0 gets nothing from its weight, but takes what nobody else can.
    assert group_quotas({"x": 0, "y": 5}, {"x": 10, "y": 3}, 8, "proportional") == {"x": 5, "y": 3}


def test_minimum_rows_weights_and_errors():
    assert group_quotas(SIZES, CANDIDATES, 100, "none", minimum=3)["small"] == 3  # none would give 2.7
    assert group_quotas({"a": 1, "b": 1}, {"a": 10, "b": 10}, 9, "equal", weights={"a": 2, "b": 1}) == {"a": 6, "b": 3}
    assert group_quotas({"a": 1, "b": 1}, {"a": 0, "b": 10}, 5, "equal", minimum=1) == {"a": 0, "b": 5}
    with pytest.raises(ValueError, match="minimum"):
        group_quotas(SIZES, CANDIDATES, 3, "equal", minimum=1)
    with pytest.raises(ValueError, match="fairness.mode"):
        group_quotas(SIZES, CANDIDATES, 3, "fair")
    with pytest.raises(ValueError, match="group_by"):
        FairnessSettings(group_by="site")
    assert FairnessSettings.from_parameters(None) == FairnessSettings()


# --------------------------------------------------------------------------- server


def _category_uploads(rows_small: int = 6) -> list[ClientUpload]:
    rng = np.random.default_rng(0)
    big = {c: rng.normal(size=(60, 4)).astype(np.float32) for c in ("a", "b", "c")}
    small = rng.normal(size=(rows_small, 4)).astype(np.float32)
    return [
        ClientUpload("plant", dict(big), dict.fromkeys(big, 20)),
        ClientUpload("qc", {"small": small, "a": big["a"][:5] + 1}, {"small": 2, "a": 2}),
    ]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", {"a": 16, "b": 15, "c": 15, "small": 2}),  # 6 of 191 rows -> 1.5 of 48 (ties to the first)
        ("proportional", {"a": 15, "b": 14, "c": 14, "small": 5}),  # floor: ceil(0.1 x 48)
        ("equal", {"a": 14, "b": 14, "c": 14, "small": 6}),  # 12 each, small has 6: its 6 go to the others
    ],
)
def test_total_bank_size_is_split_among_categories_by_the_mode(mode, expected):
    settings = ServerSettings(
        "federated_coreset", None, 1, 8, 0, total_bank_size=48, fairness=FairnessSettings(mode, "category", 0.1)
    )
    result = run_round(_category_uploads(), settings)
    rows = {c: len(b) for c, b in result.bank.banks.items()}
    assert rows == expected
    assert result.report["category_quotas"] == expected
    assert result.report["fairness"]["mode"] == mode


def test_global_bank_size_caps_each_category_within_the_total():
    result = aggregate(
        _category_uploads(), "concatenate", 10, projection_dim=8, total_bank_size=100,
        fairness=FairnessSettings("equal"),
    )
    assert {c: len(b) for c, b in result.banks.items()} == {"a": 10, "b": 10, "c": 10, "small": 6}


def test_defaults_leave_the_selection_unchanged():
    uploads = _category_uploads()
    before = aggregate(uploads, "federated_coreset", 20, projection_dim=8)
    after = aggregate(uploads, "federated_coreset", 20, projection_dim=8, total_bank_size=None, fairness=FairnessSettings())
    for category in before.banks:
        np.testing.assert_array_equal(before.banks[category], after.banks[category])
    assert before.summary() == after.summary() and "category_quotas" not in after.summary()


def test_group_by_client_splits_each_category_among_clients_by_the_mode():
    rng = np.random.default_rng(1)
    uploads = [
        ClientUpload("big", {"p": rng.normal(size=(40, 4)).astype(np.float32)}, {"p": 18}),
        ClientUpload("small", {"p": rng.normal(size=(40, 4)).astype(np.float32)}, {"p": 2}),
    ]
    kept = {}
    for mode in ("none", "proportional", "equal"):
        result = aggregate(uploads, "federated_coreset", 20, projection_dim=8, fairness=FairnessSettings(mode, "client", 0.25))
        kept[mode] = result.contributions["p"]
    assert kept["none"] == {"big": 18, "small": 2}  # today's split: ∝ images
    assert kept["proportional"] == {"big": 15, "small": 5}  # at least a quarter
    assert kept["equal"] == {"big": 10, "small": 10}
    with pytest.raises(ValueError, match="per-client quotas"):
        aggregate(uploads, "diversity", 20, fairness=FairnessSettings("equal", "client"))


# --------------------------------------------------------------------------- client


def test_a_client_with_several_categories_splits_its_budget_by_the_mode():
    n_rows, n_images = {"big": 1000, "small": 100}, {"big": 10, "small": 1}

    def sizes(mode, total_size=None, min_rows=1):
        parameters = {
            "coreset": {"ratio": 0.1, "max_size": None, "projection_dim": None, "total_size": total_size, "min_rows": min_rows},
            "federation": {},
            "extraction": {"batch_size": 1, "num_workers": 0},
            "seed": 0,
            "fairness": {"mode": mode, "group_by": "category", "min_share": 0.25},
        }
        settings = client.ClientSettings.from_run(parameters, "qc")
        return client.local_coreset_sizes(n_rows, n_images, settings)

    assert sizes("none") == {"big": 100, "small": 10}  # ratio x patches, as always
    assert sizes("equal") == {"big": 55, "small": 55}  # the same 110 rows, shared evenly
    assert sizes("proportional") == {"big": 82, "small": 28}  # ∝ images, at least a quarter
    assert sizes("none", total_size=55) == {"big": 50, "small": 5}  # one budget, ∝ patches
    assert sizes("equal", total_size=500) == {"big": 400, "small": 100}  # small runs short: rest to big
    assert sizes("none", total_size=55, min_rows=20) == {"big": 35, "small": 20}  # small's floor, rest to big
    with pytest.raises(ValueError, match=r"coreset.min_rows=30"):
        sizes("none", total_size=55, min_rows=30)  # 2 x 30 rows do not fit in 55


# --------------------------------------------------------------------------- metrics


def _category(auroc, spro):
    return {"image_auroc": auroc, "aucspro": None if spro is None else {"0.01": spro / 2, "0.05": spro}}


def test_fairness_metrics_per_category_and_per_client_on_hand_made_values():
    per_category = {"a": _category(1.0, 0.8), "b": _category(0.9, 0.6), "c": _category(0.5, None)}
    fairness = fairness_metrics(per_category, {"plant": ["a", "b"], "qc": ["a", "b", "c"], "c_site": ["c"]})
    category = fairness["category"]
    assert category["groups"]["b"] == {"image_auroc": 0.9, "aucspro_0.01": 0.3, "aucspro_0.05": 0.6}
    auroc = category["summary"]["image_auroc"]
    assert auroc["worst"] == 0.5 and auroc["worst_group"] == "c" and auroc["best_group"] == "a"
    assert auroc["gap"] == pytest.approx(0.5)
    assert auroc["std"] == pytest.approx(np.std([1.0, 0.9, 0.5]))
    assert auroc["mean"] == pytest.approx(0.8)
    spro = category["summary"]["aucspro_0.05"]
    assert spro["n_groups"] == 2 and spro["worst_group"] == "b" and spro["gap"] == pytest.approx(0.2)

    clients = fairness["client"]
    assert clients["groups"]["plant"]["image_auroc"] == pytest.approx(0.95)  # mean of a and b
    assert clients["groups"]["qc"]["image_auroc"] == pytest.approx(0.8)
    assert clients["groups"]["c_site"] == {"image_auroc": 0.5}
    assert clients["summary"]["image_auroc"]["worst_group"] == "c_site"
    assert clients["summary"]["aucspro_0.05"]["n_groups"] == 2  # c_site has no sPRO
    assert clients["members"]["qc"] == ["a", "b", "c"]
    assert "client" not in fairness_metrics(per_category)
    assert group_spread({"x": None})["worst"] is None


def test_experiment_table_fairness_rows_are_groups_then_worst_then_mean():
    per_category = {"a": _category(1.0, 0.8), "b": _category(0.6, 0.7)}
    run = {
        "categories": per_category,
        "mean": {"image_auroc": 0.8, "aucspro": {"0.05": 0.75}},
        "fairness": fairness_metrics(per_category, {"x": ["a"], "y": ["a", "b"]}),
    }
    table = experiment_table({"federated": run, "equal": run}, {"federated": {"mode": "none"}, "equal": {"mode": "equal"}}, "fairness")
    assert list(table.columns[:4]) == ["mode", "group", "image_auroc", "aucspro_0.05"]
    assert table["group"].tolist() == ["a", "b", "worst", "mean"] * 2
    worst = table[table["group"] == "worst"].iloc[0]
    assert worst["image_auroc"] == 0.6 and worst["aucspro_0.05"] == 0.7  # each column's worst
    clients = experiment_table({"federated": run}, None, "clients")
    assert clients["group"].tolist() == ["x", "y", "worst", "mean"]
    assert clients["image_auroc"].tolist() == pytest.approx([1.0, 0.8, 0.8, 0.9])
    # The default grouping is untouched: categories then the mean.
    assert experiment_table({"federated": run}, None, "categories")["group"].tolist() == ["a", "b", "mean"]


# --------------------------------------------------------------------------- imbalance


def _samples(category: str, n_train: int, n_test: int = 2) -> list[Sample]:
    train = [Sample(category, "train", "good", f"{i:03d}", f"/{category}/{i}.png") for i in range(n_train)]
    test = [Sample(category, "test", "good", f"{i:03d}", f"/{category}/t{i}.png") for i in range(n_test)]
    return train + test


def test_train_fraction_keeps_a_seeded_share_of_one_category_and_no_test_image():
    samples = _samples("metal", 24) + _samples("fabric", 24)
    kept, counts = subsample_training(samples, {"metal": 0.1}, seed=0)
    assert counts == {"metal": {"kept": 2, "of": 24}}
    metal_train = [s for s in kept if s.category == "metal" and s.split == "train"]
    assert len(metal_train) == 2
    assert sum(s.category == "fabric" for s in kept) == 26
    assert sum(s.split == "test" for s in kept) == 4
    again, _ = subsample_training(list(reversed(samples)), {"metal": 0.1}, seed=0)
    assert {s.key for s in again} == {s.key for s in kept}  # input order does not matter
    assert subsample_training(samples, {"metal": 0.01}, seed=0)[1]["metal"]["kept"] == 1  # at least one
    assert subsample_training(samples, {}, seed=0)[0] == samples
    with pytest.raises(ValueError, match="without training images"):
        subsample_training(samples, {"plate": 0.5}, seed=0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        subsample_training(samples, {"metal": 0.0}, seed=0)
