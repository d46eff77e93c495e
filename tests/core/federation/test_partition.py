from __future__ import annotations

import json

import pytest

from fedpatchcore.core.data.types import Sample
from fedpatchcore.core.federation.partition import (
    AUTOVI_DEFAULT_CLIENTS,
    client_ids_for,
    make_partition,
    partition_by_category,
    partition_dirichlet,
    partition_iid,
    partition_statistics,
)


def make_samples(counts: dict[str, int], n_test: int = 2) -> list[Sample]:
    samples = []
    for cat, n in counts.items():
        for i in range(n):
            samples.append(Sample(cat, "train", "good", f"{i:04d}", f"/x/{cat}/train/{i}.png"))
        for i in range(n_test):
            samples.append(
                Sample(cat, "test", "good" if i % 2 else "scratch", f"{i:04d}", f"/x/{cat}/t{i}.png")
            )
    return samples


SAMPLES = make_samples({"a": 20, "b": 10, "c": 7, "d": 1})
TRAIN_KEYS = {s.key for s in SAMPLES if s.split == "train"}


def check_disjoint_complete(assignment: dict[str, list[str]]) -> None:
    all_keys = [k for keys in assignment.values() for k in keys]
    assert len(all_keys) == len(set(all_keys))
    assert set(all_keys) == TRAIN_KEYS
    for keys in assignment.values():
        assert keys == sorted(keys)
    stats = partition_statistics(assignment, SAMPLES)
    assert stats["disjoint"] and stats["complete"]
    json.dumps(stats)


def test_iid_balanced_deterministic_and_seeded():
    a = partition_iid(SAMPLES, 4, seed=0)
    check_disjoint_complete(a)
    assert list(a) == ["1", "2", "3", "4"]
    sizes = [len(v) for v in a.values()]
    assert max(sizes) - min(sizes) <= 1
    assert a == partition_iid(list(reversed(SAMPLES)), 4, seed=0)
    assert a != partition_iid(SAMPLES, 4, seed=1)


def test_iid_too_many_clients():
    with pytest.raises(ValueError, match="num_clients"):
        partition_iid(make_samples({"a": 3}), 4, seed=0)


def test_category_with_qc():
    clients = {"x": ["a"], "y": ["b", "c"], "qc": "all"}
    a = partition_by_category(SAMPLES, clients, qc_sample_ratio=0.1, seed=0)
    check_disjoint_complete(a)
    assert list(a) == ["x", "y", "qc"]
    cat = {s.key: s.category for s in SAMPLES}
    qc_counts = {c: sum(cat[k] == c for k in a["qc"]) for c in "abcd"}
    # round(0.1*n), at least 1 when n >= 2; 'd' is listed by nobody so QC holds all of it
    assert qc_counts == {"a": 2, "b": 1, "c": 1, "d": 1}
    assert {cat[k] for k in a["x"]} == {"a"} and len(a["x"]) == 18
    assert {cat[k] for k in a["y"]} == {"b", "c"} and len(a["y"]) == 15
    assert a == partition_by_category(SAMPLES, clients, 0.1, seed=0)
    assert a != partition_by_category(SAMPLES, clients, 0.1, seed=3)


def test_category_without_qc_needs_every_category():
    with pytest.raises(ValueError, match="'d'"):
        partition_by_category(SAMPLES, {"x": ["a"], "y": ["b", "c"]})
    a = partition_by_category(SAMPLES, {"x": ["a", "d"], "y": ["b", "c"]})
    check_disjoint_complete(a)


def test_category_errors_name_the_client():
    with pytest.raises(ValueError, match=r"'x'.*'y'|'y'.*'x'"):
        partition_by_category(SAMPLES, {"x": ["a"], "y": ["a", "b"], "qc": "all"})
    with pytest.raises(ValueError, match=r"'y'.*'zzz'"):
        partition_by_category(SAMPLES, {"x": ["a"], "y": ["zzz"], "qc": "all"})
    # 'd' has a single image and QC takes it at ratio 0.5 -> the specialist is empty
    with pytest.raises(ValueError, match="'only_d'"):
        partition_by_category(SAMPLES, {"only_d": ["d"], "qc": "all"}, qc_sample_ratio=0.5)


def test_dirichlet_min_guarantee_and_determinism():
    for seed in range(5):
        a = partition_dirichlet(SAMPLES, 6, alpha=0.05, seed=seed, min_images_per_client=3)
        check_disjoint_complete(a)
        assert min(len(v) for v in a.values()) >= 3
    a = partition_dirichlet(SAMPLES, 3, alpha=0.5, seed=0)
    assert a == partition_dirichlet(SAMPLES, 3, alpha=0.5, seed=0)
    assert a != partition_dirichlet(SAMPLES, 3, alpha=0.5, seed=1)
    with pytest.raises(ValueError, match="at least"):
        partition_dirichlet(SAMPLES, 10, alpha=1.0, seed=0, min_images_per_client=4)


def test_make_partition_and_client_ids():
    for scheme, kw in [
        ("iid", {"num_clients": 3}),
        ("dirichlet", {"num_clients": 3, "alpha": 1.0}),
        ("category", {"clients": {"x": ["a"], "y": ["b", "c"], "qc": "all"}}),
    ]:
        a = make_partition(SAMPLES, scheme, seed=0, **kw)
        check_disjoint_complete(a)
        assert list(a) == client_ids_for(scheme, kw.get("num_clients"), kw.get("clients"))
    with pytest.raises(ValueError, match="federation.partition"):
        make_partition(SAMPLES, "random", num_clients=2)
    assert client_ids_for("category", clients=AUTOVI_DEFAULT_CLIENTS) == list(AUTOVI_DEFAULT_CLIENTS)


def test_statistics_counts_and_checks():
    a = partition_iid(SAMPLES, 2, seed=0)
    stats = partition_statistics(a, SAMPLES)
    assert stats["totals"]["n_images"] == len(TRAIN_KEYS)
    assert stats["totals"]["categories"] == {"a": 20, "b": 10, "c": 7, "d": 1}
    assert stats["totals"]["labels"] == {"0": len(TRAIN_KEYS)}
    assert sum(c["n_images"] for c in stats["clients"].values()) == len(TRAIN_KEYS)
    broken = {"1": a["1"], "2": a["2"] + a["1"][:1]}
    with pytest.raises(ValueError, match="disjoint"):
        partition_statistics(broken, SAMPLES)
    with pytest.raises(ValueError, match="complete"):
        partition_statistics({"1": a["1"]}, SAMPLES)
