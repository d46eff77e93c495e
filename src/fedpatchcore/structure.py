"""The parts of the pipelines' shape that come from parameters: variants, clients, rounds.

An experiment runs **variants** side by side: the main federated run (``federated``), the
centralized baseline (``centralized``) and, with ``comparison.enabled``, every
``comparison.variants.<name>``: overrides of any parameter block (``federation``,
``aggregation``, ``coreset``, ``scoring`` ...) deep-merged into the run's parameters.
:func:`resolve_variants` does that merge once; the config loader publishes the result as
the parameter ``variants.<name>.<block>``, and every node of variant ``<name>`` reads its
settings from there (the pipeline builders map ``params:<block>`` onto it), so an override
reaches every node of its variant and no node merges anything itself.

Variants whose clients see the same images share work: a variant uses the partition of the
first variant with the same partition settings, and each of its clients uses the feature
extraction of the first variant in which that client sees the same images with the same
extraction settings, and that variant's whole client lane (coreset, first upload) when the
coreset settings match too (:attr:`Variant.partition_owner`, :attr:`Variant.feature_owner`,
:attr:`Variant.lane_owner`).

Everything here takes the run's parameters explicitly: ``pipeline_registry.create_pipelines``
gets them from the config loader (which owns them: ``fedpatchcore.config_loader``), tests pass
their own. Which work two variants may share is decided by one fingerprint recipe
(:func:`fedpatchcore.core.common.fingerprint.fingerprint`) over what that work depends on:
which images (:data:`SPLIT_PARAMETERS`) and, per client, what its features and coreset depend
on (:func:`fedpatchcore.core.federation.client.feature_inputs`, ``coreset_inputs``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedpatchcore.core.common.fingerprint import fingerprint, values_at
from fedpatchcore.core.federation.partition import client_ids_of

logger = logging.getLogger(__name__)

MAIN_VARIANT = "federated"
CENTRALIZED = "centralized"
# The centralized baseline's single client, which holds every training image.
CENTRALIZED_CLIENT = "all"
# Names every run uses itself; a comparison variant cannot take them.
RESERVED_VARIANT_NAMES = (MAIN_VARIANT, CENTRALIZED)
# A variant name names a Kedro namespace and folders: a letter, then letters, digits and '_'.
VARIANT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# The parameter key under which the config loader publishes every variant's resolved parameters.
VARIANTS_KEY = "variants"
# Blocks a variant cannot override: ingest is shared by all variants, the experiment's own
# description cannot vary inside it, `explain` and `predict` choose a variant themselves, the
# validation split is held out of every variant's training images alike, and the tuned
# per-category settings are the run's (every client of every variant extracts a category with
# its setting; README "Tuning and inspecting new images"). Whether a run is tracked (`mlflow`)
# is the run's, not a variant's.
NOT_OVERRIDABLE = {"dataset", "comparison", VARIANTS_KEY, "explain", "predict", "validation", "tune", "tuned", "mlflow"}
# ... except these keys of them: how many training images each category's banks are built from
# is what a few-shot experiment varies (the images themselves are shared: ingest runs once).
OVERRIDABLE_KEYS = {"dataset": {"train_shots"}}
# Dict-valued parameters keyed by names the user chose (client ids, variant names,
# categories): an override replaces them whole rather than adding its keys to the base ones.
REPLACED_WHOLE: frozenset[tuple[str, ...]] = frozenset(
    {
        ("federation", "clients"),
        ("federation", "client_coreset_ratios"),
        ("coreset", "denoise_by_category"),
        ("comparison", "variants"),
        ("comparison", "labels"),
        ("dataset", "image_sizes"),
        ("dataset", "train_fraction"),
        ("heterogeneity",),
        ("tuned",),
    }
)
# Parameters that decide which images the clients hold (label noise swaps some of them).
SPLIT_PARAMETERS: tuple[tuple[str, ...], ...] = (
    ("seed",),
    ("dataset", "train_shots"),
    ("federation", "partition"),
    ("federation", "num_clients"),
    ("federation", "clients"),
    ("federation", "qc_sample_ratio"),
    ("federation", "alpha"),
    ("federation", "train_per_category"),
)
PARTITION_PARAMETERS = (*SPLIT_PARAMETERS, ("heterogeneity",))
# Only in-process lanes write features another variant could read (a Flower variant's sites
# keep theirs), so the engine is part of where a client's features come from.
ENGINE = ("federation", "engine")
# Each category is extracted with its tuned setting (the run's, as every variant has the same).
TUNED = ("tuned",)


# --------------------------------------------------------------------------- merging


def merge_parameters(
    base: Mapping[str, Any],
    override: Mapping[str, Any],
    replaced_whole: Iterable[tuple[str, ...]] = REPLACED_WHOLE,
    _path: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``override`` deep-merged into ``base`` (neither is modified).

    Mappings merge key by key; anything else (and every path in ``replaced_whole``) is
    replaced by the override's value.
    """
    replaced_whole = frozenset(replaced_whole)
    out = dict(base)
    for key, value in override.items():
        path = (*_path, str(key))
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and path not in replaced_whole:
            out[key] = merge_parameters(out[key], value, replaced_whole, path)
        else:
            out[key] = value
    return out


def variant_name_problem(name: Any) -> str | None:
    """What is wrong with ``name`` as a comparison variant's name, as "<name> <problem>" (``None``: nothing)."""
    if str(name) in RESERVED_VARIANT_NAMES:
        return f"is reserved ({' and '.join(RESERVED_VARIANT_NAMES)} are the run's own); choose another"
    if not isinstance(name, str) or not VARIANT_NAME.match(name):
        return "must be a letter followed by letters, digits and '_' (it names a Kedro namespace)"
    return None


def overridable_blocks(parameters: Mapping[str, Any]) -> list[str]:
    """The parameter blocks a comparison variant may override (the rest are shared by every variant)."""
    return sorted(str(k) for k in parameters if k not in NOT_OVERRIDABLE)


def round_bank(round_number: int, rounds: int) -> str:
    """A variant's dataset holding the global bank after ``round_number``: the last round's is its memory bank."""
    return "memory_bank" if round_number == rounds else f"global_bank_round_{round_number}"


def resolve_variants(parameters: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every variant's complete parameters: ``centralized``, ``federated`` and the comparison variants."""
    shared = {k: v for k, v in parameters.items() if k not in ("comparison", VARIANTS_KEY)}
    resolved = {CENTRALIZED: shared, MAIN_VARIANT: shared}
    comparison = parameters.get("comparison") or {}
    if not comparison.get("enabled", False):
        return resolved
    for name, override in (comparison.get("variants") or {}).items():
        where = f"comparison.variants.{name}"
        problem = variant_name_problem(name)
        if problem:
            raise ValueError(f"{where}: the variant name {name!r} {problem}")
        override = override or {}
        if not isinstance(override, Mapping):
            raise ValueError(f"{where} must map parameter blocks to their overrides, got {override!r}")
        # `labels` name the variant in the experiment's table; they are not parameters.
        override = {k: v for k, v in override.items() if k != "labels"}
        for block, value in override.items():
            allowed = OVERRIDABLE_KEYS.get(block, set())
            if block in NOT_OVERRIDABLE and not (isinstance(value, Mapping) and allowed and set(value) <= allowed):
                only = f" (but for {sorted(allowed)})" if allowed else ""
                raise ValueError(f"{where}.{block}: '{block}' is shared by every variant and cannot be overridden{only}")
            if block not in shared:
                raise ValueError(
                    f"{where}.{block}: unknown parameter block; a variant overrides one of {overridable_blocks(shared)}"
                )
            if isinstance(shared[block], Mapping) and not isinstance(value, Mapping):
                raise ValueError(f"{where}.{block} must be a mapping of '{block}' keys, got {value!r}")
        resolved[str(name)] = merge_parameters(shared, override)
    return resolved


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One federated run inside the experiment: its parameters, clients, rounds and shared work."""

    name: str  # namespace of its datasets and nodes, e.g. "federated" or "federated_iid"
    parameters: dict[str, Any] = field(repr=False)  # complete, with this variant's overrides
    partition_owner: str  # the variant whose partition this one uses (itself if first)
    feature_owner: dict[str, str]  # client id -> variant whose feature extraction it uses
    lane_owner: dict[str, str]  # client id -> variant whose client lane (coreset, first upload) it uses

    @property
    def federation(self) -> dict[str, Any]:
        return self.parameters["federation"]

    @property
    def client_ids(self) -> list[str]:
        return client_ids_of(self.federation)

    @property
    def summary(self) -> bool:
        """Whether the variant's bank is a private summary (``privacy.mechanism: summary``)."""
        return (self.parameters.get("privacy") or {}).get("mechanism", "rows") == "summary"

    @property
    def rounds(self) -> int:
        """Server rounds: ``federation.rounds``, or a summary's DP-Lloyd rounds (at least one report)."""
        if self.summary:
            return max(1, int(((self.parameters.get("privacy") or {}).get("summary") or {}).get("rounds", 2)))
        rounds = int(self.federation.get("rounds", 1))
        if rounds < 1:
            raise ValueError(f"federation.rounds must be at least 1 (variant {self.name}), got {rounds}")
        return rounds

    @property
    def owns_partition(self) -> bool:
        return self.partition_owner == self.name

    def owns_features(self, client_id: str) -> bool:
        return self.feature_owner[client_id] == self.name

    def owns_lane(self, client_id: str) -> bool:
        return self.lane_owner[client_id] == self.name


def federated_variants(parameters: Mapping[str, Any]) -> list[Variant]:
    """The main federated run plus, when comparison is enabled, its comparison variants.

    A variant uses the partition, a client's features and a client's whole lane of the first
    variant whose fingerprint of what that work depends on is the same as its own.
    """
    # Imported here: the client module loads torch, which the config loader (it imports this
    # module at every `kedro` command) should not pay for before a pipeline is built.
    from fedpatchcore.core.federation.client import coreset_inputs, feature_inputs

    partition_owners: dict[str, str] = {}
    feature_owners: dict[str, str] = {}
    lane_owners: dict[str, str] = {}
    variants = []
    for name, values in resolve_variants(parameters).items():
        if name == CENTRALIZED:
            continue
        partition_owner = partition_owners.setdefault(fingerprint(values_at(values, PARTITION_PARAMETERS)), name)
        images = values_at(values, (*SPLIT_PARAMETERS, ENGINE, TUNED))  # which images, and who keeps the features
        clients = client_ids_of(values["federation"])
        features = {c: feature_owners.setdefault(fingerprint(c, images, feature_inputs(values, c)), name) for c in clients}
        lanes = {c: lane_owners.setdefault(fingerprint(c, images, coreset_inputs(values, c)), name) for c in clients}
        if (values.get("privacy") or {}).get("mechanism", "rows") == "summary":
            lanes = dict.fromkeys(clients, name)  # a summary variant runs (and charges) its own rounds
        variants.append(Variant(name, values, partition_owner, features, lanes))
    return variants


def comparison_enabled(parameters: Mapping[str, Any]) -> bool:
    return bool((parameters.get("comparison") or {}).get("enabled", False))
