"""Who holds which training images: splitting a dataset's train split among clients.

Only ``split == "train"`` samples are partitioned; test images stay with the evaluator.
Every scheme returns ``{client_id: [sample_key, ...]}`` with keys sorted within a client,
client ids as strings, and is fully determined by its seed (input order does not matter:
samples are sorted by key before any random draw).

Schemes (``federation.partition``):

* ``iid``: shuffle, split evenly (sizes differ by at most one); ids ``"1".."n"``.
* ``category``: each client lists the categories it produces; an optional QC client marked
  ``"all"`` first takes ``qc_sample_ratio`` of every category, the specialised clients share
  the rest (each category belongs to at most one specialised client).
* ``dirichlet``: per category, client proportions ~ Dirichlet(alpha): small alpha gives
  strong quantity and category skew, large alpha approaches iid; ids ``"1".."n"``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedpatchcore.core.common.quotas import largest_remainder
from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.data.types import TRAIN, Sample, group_by_category

ALL_CATEGORIES = "all"
SCHEMES = ("iid", "category", "dirichlet")

# The five-site AutoVI layout: four specialised plants and one quality-control site that
# sees a sample of every category.
AUTOVI_DEFAULT_CLIENTS: dict[str, list[str] | str] = {
    "engine": ["engine_wiring"],
    "underbody": ["underbody_pipes", "underbody_screw"],
    "tank_staple": ["tank_screw", "pipe_staple"],
    "clip": ["pipe_clip"],
    "qc": ALL_CATEGORIES,
}

# Dirichlet: how many fresh draws (continuing the seeded generator) are tried before the
# minimum-size guarantee is enforced by moving images deterministically.
DIRICHLET_MAX_REDRAWS = 20

Assignment = dict[str, list[str]]


# --------------------------------------------------------------------------- helpers


def _train_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Train samples sorted by key; duplicate keys are an error."""
    train = sorted((s for s in samples if s.split == TRAIN), key=lambda s: s.key)
    keys = [s.key for s in train]
    duplicates = sorted(k for k, n in Counter(keys).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate sample keys in the training split: {duplicates[:5]}")
    if not train:
        raise ValueError("no training samples (split == 'train') to partition")
    return train


def _check_num_clients(num_clients: int) -> int:
    if isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"federation.num_clients must be a positive integer, got {num_clients!r}")
    return int(num_clients)


def _finish(assignment: Mapping[str, Sequence[str]]) -> Assignment:
    return {cid: sorted(keys) for cid, keys in assignment.items()}


def _numbered_ids(num_clients: int) -> list[str]:
    return [str(i) for i in range(1, num_clients + 1)]


# --------------------------------------------------------------------------- schemes


def partition_iid(samples: Sequence[Sample], num_clients: int, seed: int) -> Assignment:
    """Shuffle the training images and split them evenly among ``num_clients`` clients."""
    num_clients = _check_num_clients(num_clients)
    train = _train_samples(samples)
    if len(train) < num_clients:
        raise ValueError(
            f"{len(train)} training images cannot give each of federation.num_clients={num_clients} "
            "clients at least one image"
        )
    keys = np.array([s.key for s in train], dtype=object)
    order = np.random.default_rng(int(seed)).permutation(len(keys))
    chunks = np.array_split(keys[order], num_clients)
    return _finish({cid: list(chunk) for cid, chunk in zip(_numbered_ids(num_clients), chunks, strict=True)})


def _normalise_clients(clients: Mapping[str, Sequence[str] | str]) -> dict[str, list[str] | str]:
    if not clients:
        raise ValueError("federation.clients is empty: list each client and its categories")
    out: dict[str, list[str] | str] = {}
    for cid, cats in clients.items():
        cid = str(cid)
        if isinstance(cats, str):
            out[cid] = ALL_CATEGORIES if cats == ALL_CATEGORIES else [cats]
        elif cats is None:
            raise ValueError(f"client '{cid}' lists no categories (give a list or '{ALL_CATEGORIES}')")
        else:
            cats = [str(c) for c in cats]
            if ALL_CATEGORIES in cats:
                raise ValueError(
                    f"client '{cid}': '{ALL_CATEGORIES}' must be the whole value, not a list entry"
                )
            out[cid] = cats
    return out


def _qc_count(n: int, ratio: float) -> int:
    """Images the QC client takes from a category of ``n`` images (half rounds up)."""
    take = int(math.floor(ratio * n + 0.5))
    if n >= 2:
        take = max(take, 1)
    return min(take, n)


def partition_by_category(
    samples: Sequence[Sample],
    clients: Mapping[str, Sequence[str] | str],
    qc_sample_ratio: float = 0.1,
    seed: int = 0,
) -> Assignment:
    """Clients specialised by product category, plus an optional QC client seeing everything.

    ``clients`` maps each client id to a list of categories or to ``"all"`` (the QC client;
    at most one). The QC client first takes ``qc_sample_ratio`` of every category (at least
    one image of a category with two or more); each specialised client then takes all that
    is left of its categories. A category no specialised client lists stays with QC only.
    Client ids and their order are those of ``clients``.
    """
    spec = _normalise_clients(clients)
    train = _train_samples(samples)
    groups = {c: sorted(s.key for s in group) for c, group in group_by_category(train).items()}

    qc_ids = [cid for cid, cats in spec.items() if cats == ALL_CATEGORIES]
    if len(qc_ids) > 1:
        raise ValueError(f"federation.clients: only one client may be '{ALL_CATEGORIES}', got {qc_ids}")
    qc = qc_ids[0] if qc_ids else None
    if qc is not None and not 0.0 < float(qc_sample_ratio) <= 1.0:
        raise ValueError(f"federation.qc_sample_ratio must be in (0, 1], got {qc_sample_ratio!r}")

    owner: dict[str, str] = {}
    for cid, cats in spec.items():
        if cats == ALL_CATEGORIES:
            continue
        for cat in cats:
            if cat not in groups:
                raise ValueError(
                    f"client '{cid}' lists category '{cat}', which has no training images "
                    f"(known categories: {sorted(groups)})"
                )
            if cat in owner and owner[cat] != cid:
                raise ValueError(
                    f"category '{cat}' is listed by both client '{owner[cat]}' and client '{cid}': "
                    "specialised clients must not overlap (use the QC client for shared views)"
                )
            owner[cat] = cid

    assignment: dict[str, list[str]] = {cid: [] for cid in spec}
    for cat, keys in groups.items():
        if cat not in owner and qc is None:
            raise ValueError(
                f"category '{cat}' is listed by no client and there is no '{ALL_CATEGORIES}' (QC) client"
            )
        if qc is None:
            assignment[owner[cat]].extend(keys)
            continue
        if cat not in owner:
            assignment[qc].extend(keys)
            continue
        shuffled = [keys[i] for i in derive_rng(seed, cat).permutation(len(keys))]
        n_qc = _qc_count(len(keys), float(qc_sample_ratio))
        assignment[qc].extend(shuffled[:n_qc])
        assignment[owner[cat]].extend(shuffled[n_qc:])

    for cid, keys in assignment.items():
        if not keys:
            raise ValueError(f"client '{cid}' ends up with zero training images under federation.clients")
    return _finish(assignment)


def partition_dirichlet(
    samples: Sequence[Sample],
    num_clients: int,
    alpha: float,
    seed: int,
    min_images_per_client: int = 1,
) -> Assignment:
    """Per category, split images by proportions ~ Dirichlet(alpha) over the clients.

    Guarantee: every client gets at least ``min_images_per_client`` images. The whole draw
    is repeated (continuing the seeded generator) up to ``DIRICHLET_MAX_REDRAWS`` times;
    if it still falls short, images are moved one by one from the largest client (ties:
    lowest id) to the first short client, taking the donor's last key from its largest
    category. Raises if there are fewer images than ``num_clients * min_images_per_client``.
    """
    num_clients = _check_num_clients(num_clients)
    if not float(alpha) > 0:
        raise ValueError(f"federation.alpha must be > 0, got {alpha!r}")
    if int(min_images_per_client) < 0:
        raise ValueError(f"min_images_per_client must be >= 0, got {min_images_per_client!r}")
    min_images = int(min_images_per_client)
    train = _train_samples(samples)
    if len(train) < num_clients * min_images:
        raise ValueError(
            f"cannot give each of federation.num_clients={num_clients} clients at least "
            f"{min_images} images: only {len(train)} training images"
        )
    groups = {c: sorted(s.key for s in group) for c, group in group_by_category(train).items()}
    key_category = {s.key: s.category for s in train}
    ids = _numbered_ids(num_clients)
    rng = np.random.default_rng(int(seed))

    def draw() -> list[list[str]]:
        held: list[list[str]] = [[] for _ in ids]
        for keys in groups.values():
            proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
            counts = largest_remainder(proportions, len(keys))
            order = rng.permutation(len(keys))
            start = 0
            for i, c in enumerate(counts):
                held[i].extend(keys[j] for j in order[start : start + c])
                start += c
        return held

    held = draw()
    for _ in range(DIRICHLET_MAX_REDRAWS):
        if min(len(h) for h in held) >= min_images:
            break
        held = draw()

    while True:
        short = [i for i, h in enumerate(held) if len(h) < min_images]
        if not short:
            break
        donor = max(range(num_clients), key=lambda i: (len(held[i]), -i))
        cat_counts = Counter(key_category[k] for k in held[donor])
        top_cat = min(cat_counts, key=lambda c: (-cat_counts[c], c))
        key = max(k for k in held[donor] if key_category[k] == top_cat)
        held[donor].remove(key)
        held[short[0]].append(key)

    return _finish(dict(zip(ids, held, strict=True)))


# --------------------------------------------------------------------------- dispatch


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"federation.partition must be one of {list(SCHEMES)}, got {scheme!r}")
    return scheme


def make_partition(
    samples: Sequence[Sample],
    scheme: str,
    *,
    num_clients: int | None = None,
    clients: Mapping[str, Sequence[str] | str] | None = None,
    qc_sample_ratio: float = 0.1,
    alpha: float | None = None,
    seed: int = 0,
    min_images_per_client: int = 1,
) -> Assignment:
    """Run the scheme named by ``federation.partition`` with the parameters it needs."""
    _check_scheme(scheme)
    if scheme == "iid":
        if num_clients is None:
            raise ValueError("federation.partition 'iid' needs federation.num_clients")
        return partition_iid(samples, num_clients, seed)
    if scheme == "category":
        if clients is None:
            raise ValueError(
                "federation.partition 'category' needs federation.clients "
                "(client id -> list of categories or 'all')"
            )
        return partition_by_category(samples, clients, qc_sample_ratio=qc_sample_ratio, seed=seed)
    if num_clients is None or alpha is None:
        raise ValueError("federation.partition 'dirichlet' needs federation.num_clients and federation.alpha")
    return partition_dirichlet(samples, num_clients, alpha, seed, min_images_per_client=min_images_per_client)


def client_ids_for(
    scheme: str,
    num_clients: int | None = None,
    clients: Mapping[str, Sequence[str] | str] | None = None,
) -> list[str]:
    """The client ids :func:`make_partition` will produce, known before any data is read."""
    _check_scheme(scheme)
    if scheme == "category":
        if clients is None:
            raise ValueError("federation.partition 'category' needs federation.clients")
        return list(_normalise_clients(clients))
    if num_clients is None:
        raise ValueError(f"federation.partition '{scheme}' needs federation.num_clients")
    return _numbered_ids(_check_num_clients(num_clients))


def partition_from_parameters(samples: Sequence[Sample], federation: Mapping[str, Any], seed: int) -> Assignment:
    """:func:`make_partition` with the settings of the ``federation`` parameter block."""
    return make_partition(
        samples,
        federation["partition"],
        num_clients=federation.get("num_clients"),
        clients=federation.get("clients"),
        qc_sample_ratio=federation.get("qc_sample_ratio", 0.1),
        alpha=federation.get("alpha"),
        seed=seed,
    )


def client_ids_of(federation: Mapping[str, Any]) -> list[str]:
    """:func:`client_ids_for` the ``federation`` parameter block (its clients, before any data is read)."""
    return client_ids_for(federation["partition"], federation.get("num_clients"), federation.get("clients"))


def partition_statistics(assignment: Mapping[str, Sequence[str]], samples: Sequence[Sample]) -> dict:
    """JSON-ready summary of a partition; raises if it is not disjoint and complete.

    Complete means every training sample is held by exactly one client and no client holds
    a key that is not a training sample.
    """
    train = _train_samples(samples)
    by_key = {s.key: s for s in train}

    seen: dict[str, str] = {}
    overlaps: list[str] = []
    unknown: list[str] = []
    for cid, keys in assignment.items():
        for key in keys:
            if key not in by_key:
                unknown.append(f"{cid}:{key}")
            elif key in seen:
                overlaps.append(f"{key} (clients '{seen[key]}' and '{cid}')")
            else:
                seen[key] = str(cid)
    if overlaps:
        raise ValueError(f"partition is not disjoint: {len(overlaps)} keys held twice, e.g. {overlaps[:3]}")
    if unknown:
        raise ValueError(f"partition holds keys that are not training samples, e.g. {unknown[:3]}")
    missing = sorted(set(by_key) - set(seen))
    if missing:
        raise ValueError(
            f"partition is not complete: {len(missing)} training images unassigned, e.g. {missing[:3]}"
        )

    def counts(keys: Sequence[str]) -> dict:
        held = [by_key[k] for k in keys]
        return {
            "n_images": len(held),
            "categories": dict(sorted(Counter(s.category for s in held).items())),
            "labels": {str(k): v for k, v in sorted(Counter(s.label for s in held).items())},
        }

    return {
        "clients": {str(cid): counts(keys) for cid, keys in assignment.items()},
        "totals": {"n_clients": len(assignment), **counts(list(by_key))},
        "disjoint": True,
        "complete": True,
    }


def subsample_per_category(samples: Sequence[Sample], per_category: int | None, seed: int) -> list[Sample]:
    """At most ``per_category`` training images of each category (a seeded choice; test images kept).

    ``None`` keeps every image. The choice depends on (seed, category) and the category's keys
    only, so every variant asking for the same number holds the same images, and a smaller
    number is not a subset of a larger one's choice by design (each is its own seeded draw).
    """
    if per_category is None:
        return list(samples)
    if int(per_category) < 1:
        raise ValueError(f"federation.train_per_category must be a positive integer or null, got {per_category}")
    train = _train_samples(samples)
    by_category: dict[str, list[Sample]] = {}
    for sample in sorted(train, key=lambda s: s.key):
        by_category.setdefault(sample.category, []).append(sample)
    kept = set()
    for category, members in by_category.items():
        if len(members) <= per_category:
            kept.update(s.key for s in members)
            continue
        chosen = derive_rng(seed, "train_per_category", category).choice(len(members), int(per_category), replace=False)
        kept.update(members[i].key for i in chosen)
    return [s for s in samples if s.split != TRAIN or s.key in kept]
