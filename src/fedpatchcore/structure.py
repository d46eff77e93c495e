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

``register_pipelines()`` gets no arguments, yet a 5-client layout needs 5 lanes. The
``PipelineStructureHook`` stores the run's merged parameters here (conf environment and
``--params``); before any run in this process (kedro viz, a notebook, tests that build
pipelines directly) the project's ``conf/base`` + ``conf/$KEDRO_ENV`` (default ``conf/local``)
parameters are read instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpatchcore.core.federation.fairness import FairnessSettings
from fedpatchcore.core.federation.partition import client_ids_for
from fedpatchcore.core.privacy.release import release_parameters

logger = logging.getLogger(__name__)

MAIN_VARIANT = "federated"
CENTRALIZED = "centralized"
# The parameter key under which the config loader publishes every variant's resolved parameters.
VARIANTS_KEY = "variants"
# Blocks a variant cannot override: ingest is shared by all variants, the experiment's own
# description cannot vary inside it, `explain` and `predict` choose a variant themselves, the
# validation split is held out of every variant's training images alike, and the tuned
# per-category settings are the run's (every client of every variant extracts a category with
# its setting; README "Tuning and inspecting new images").
NOT_OVERRIDABLE = {"dataset", "comparison", VARIANTS_KEY, "explain", "predict", "validation", "tune", "tuned"}
# ... except these keys of them: how many training images each category's banks are built from
# is what a few-shot experiment varies (the images themselves are shared: ingest runs once).
OVERRIDABLE_KEYS = {"dataset": {"train_shots"}}
# Dict-valued parameters keyed by names the user chose (client ids, variant names,
# categories): an override replaces them whole rather than adding its keys to the base ones.
REPLACED_WHOLE: frozenset[tuple[str, ...]] = frozenset(
    {
        ("federation", "clients"),
        ("federation", "client_coreset_ratios"),
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
)
PARTITION_PARAMETERS = (*SPLIT_PARAMETERS, ("heterogeneity",))
# What one client's feature extraction writes depends on the split, that client's own
# heterogeneity (label noise and degradations) and the extraction settings.
EXTRACTION_PARAMETERS: tuple[tuple[str, ...], ...] = (
    *SPLIT_PARAMETERS,
    ("backbone",),
    ("extraction",),
    ("tuned",),
    ("coreset", "projection_dim"),
    ("federation", "engine"),  # only in-process lanes write features another variant could read
)
# ... and what its local coreset and first upload depend on besides the features: the coreset
# settings, the fairness block when it shapes a client's coreset (see client_fairness), and the
# DP release (only what changes the released rows: a disabled release is one thing whatever its
# other keys, and the audit changes nothing; see privacy.release_parameters).
LANE_PARAMETERS: tuple[tuple[str, ...], ...] = (*EXTRACTION_PARAMETERS, ("coreset",), ("privacy",))
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_run_parameters: dict[str, Any] | None = None


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


def _lookup(parameters: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = parameters
    for key in path:
        if not isinstance(value, Mapping):
            return None
        # Client ids may be written as numbers in YAML (`1:`) and arrive as strings elsewhere.
        match = next((k for k in value if k == key or str(k) == str(key)), None)
        if match is None:
            return None
        value = value[match]
    return value


def resolve_variants(parameters: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every variant's complete parameters: ``centralized``, ``federated`` and the comparison variants."""
    shared = {k: v for k, v in parameters.items() if k not in ("comparison", VARIANTS_KEY)}
    resolved = {CENTRALIZED: shared, MAIN_VARIANT: shared}
    comparison = parameters.get("comparison") or {}
    if not comparison.get("enabled", False):
        return resolved
    for name, override in (comparison.get("variants") or {}).items():
        where = f"comparison.variants.{name}"
        if name in (MAIN_VARIANT, CENTRALIZED):
            raise ValueError(f"{where}: '{name}' is reserved, choose another variant name")
        if not _NAME.match(str(name)):
            raise ValueError(f"{where}: a variant name must be letters, digits and '_' (it names a namespace)")
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
                    f"{where}.{block}: unknown parameter block; a variant overrides blocks such as "
                    f"{sorted(k for k in shared if isinstance(shared[k], Mapping))}"
                )
            if isinstance(shared[block], Mapping) and not isinstance(value, Mapping):
                raise ValueError(f"{where}.{block} must be a mapping of '{block}' keys, got {value!r}")
        resolved[str(name)] = merge_parameters(shared, override)
    return resolved


# --------------------------------------------------------------------------- the run's parameters


def use_parameters(parameters: dict[str, Any]) -> None:
    """Shape the next pipeline build by these parameters (a run's merged parameters)."""
    global _run_parameters
    if parameters == _run_parameters:
        return
    _run_parameters = dict(parameters)
    # Kedro caches the registered pipelines per process; rebuild them for the new shape.
    from kedro.framework.project import pipelines

    pipelines.configure("fedpatchcore.pipeline_registry")


def current_parameters() -> dict[str, Any]:
    if _run_parameters is not None:
        return _run_parameters
    from fedpatchcore.config_loader import ProjectConfigLoader

    # Same environment resolution as `kedro run`: KEDRO_ENV if set, else conf/local.
    loader = ProjectConfigLoader(
        conf_source=str(Path.cwd() / "conf"),
        base_env="base",
        default_run_env="local",
        env=os.environ.get("KEDRO_ENV"),
    )
    return loader["parameters"]


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
        federation = self.federation
        return client_ids_for(federation["partition"], federation.get("num_clients"), federation.get("clients"))

    @property
    def rounds(self) -> int:
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


def fingerprint(parameters: Mapping[str, Any], paths: Iterable[tuple[str, ...]], *extra: str) -> str:
    """A stable text of the values at ``paths`` (two variants with equal fingerprints do the same work)."""
    values = {".".join(path): _lookup(parameters, path) for path in paths}
    return json.dumps([values, extra], sort_keys=True, default=str)


def client_fairness(parameters: Mapping[str, Any]) -> str:
    """The fairness settings a client's coreset depends on ("" when they leave it as ``ratio`` makes it).

    Read as written (not validated here: the client's settings check the values when it runs).
    """
    fairness = dict(parameters.get("fairness") or {})
    defaults = FairnessSettings()
    mode, group_by = fairness.get("mode", defaults.mode), fairness.get("group_by", defaults.group_by)
    total_size = (parameters.get("coreset") or {}).get("total_size")
    shapes = group_by == "category" and (mode != "none" or total_size is not None)
    return json.dumps(fairness, sort_keys=True, default=str) if shapes else ""


def federated_variants(parameters: Mapping[str, Any] | None = None) -> list[Variant]:
    """The main federated run plus, when comparison is enabled, its comparison variants."""
    parameters = current_parameters() if parameters is None else parameters
    resolved = resolve_variants(parameters)
    partition_owners: dict[str, str] = {}
    feature_owners: dict[str, str] = {}
    lane_owners: dict[str, str] = {}
    variants = []
    for name, values in resolved.items():
        if name == CENTRALIZED:
            continue
        partition_key = fingerprint(values, PARTITION_PARAMETERS)
        partition_owner = partition_owners.setdefault(partition_key, name)
        federation = values["federation"]
        clients = client_ids_for(federation["partition"], federation.get("num_clients"), federation.get("clients"))
        own = {c: (("heterogeneity", c), ("federation", "client_coreset_ratios", c)) for c in clients}
        features = {
            c: feature_owners.setdefault(fingerprint(values, (*EXTRACTION_PARAMETERS, own[c][0]), c), name)
            for c in clients
        }
        selection = client_fairness(values)
        released = {**values, "privacy": release_parameters(values.get("privacy"))}
        lanes = {
            c: lane_owners.setdefault(fingerprint(released, (*LANE_PARAMETERS, *own[c]), c, selection), name)
            for c in clients
        }
        variants.append(Variant(name, values, partition_owner, features, lanes))
    return variants


def comparison_enabled(parameters: Mapping[str, Any] | None = None) -> bool:
    parameters = current_parameters() if parameters is None else parameters
    return bool((parameters.get("comparison") or {}).get("enabled", False))
