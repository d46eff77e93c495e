"""The parameter schema: the project's own conf passes, every bad value is named by its path."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from fedpatchcore.params_schema import (
    BLOCKS,
    KNOWN_BLOCKS,
    Block,
    ParameterError,
    block,
    parameter_problems,
    validate_parameters,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _base() -> dict:
    params: dict = {}
    for path in sorted((REPO_ROOT / "conf" / "base").glob("parameters*.yml")):
        params.update(yaml.safe_load(path.read_text()))
    return params


def _with(**changes) -> dict:
    """Base parameters with ``block__key=value`` (or ``seed=value``) changed."""
    params = _base()
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = params
        for part in parents:
            target = target[part]
        target[key] = value
    return params


def _problems(**changes) -> list[str]:
    return parameter_problems(_with(**changes))


# Every environment under conf/ (not a hand-kept list, which had left generative and few_shot out):
# a fixed privacy.noise_seed without reproducible_not_private, say, fails here.
CONF_ENVS = sorted(d.name for d in (REPO_ROOT / "conf").iterdir() if d.is_dir() and d.name not in ("base", "local"))


@pytest.mark.parametrize("env", [None, *CONF_ENVS])
def test_the_project_conf_is_valid(env):
    from fedpatchcore.config_loader import ProjectConfigLoader

    loader = ProjectConfigLoader(str(REPO_ROOT / "conf"), base_env="base", default_run_env="base", env=env)
    validate_parameters(loader["parameters"])


def test_every_conf_block_has_a_schema():
    assert set(_base()) <= set(KNOWN_BLOCKS)
    assert {
        "seed",
        "dataset",
        "backbone",
        "extraction",
        "coreset",
        "scoring",
        "federation",
        "aggregation",
        "comparison",
        "export",
        "report",
    } <= set(BLOCKS)


# Case 3 of issue 9: these failed only when their node ran, some with messages not naming them.
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"seed": "7"}, "seed: Input should be a valid integer (got '7'; a quoted value is a string"),
        ({"seed": "abc"}, "seed: Input should be a valid integer (got 'abc'"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0 (got -1)"),
        ({"coreset__ratio": 0}, "coreset.ratio: Input should be greater than 0 (got 0)"),
        ({"coreset__ratio": 1.5}, "coreset.ratio: Input should be less than or equal to 1 (got 1.5)"),
        ({"coreset__ratio": "0.1"}, "coreset.ratio: Input should be a valid number"),
        (
            {"aggregation__strategy": "fedavg"},
            "aggregation.strategy: unknown strategy 'fedavg'; choose one of",
        ),
        ({"backbone__name": "resnet18"}, "backbone.name: unknown backbone 'resnet18'; choose one of"),
        ({"backbone__device": "gpu"}, "backbone.device: unknown device 'gpu'"),
        ({"dataset__format": "coco"}, "dataset.format: unknown dataset format 'coco'"),
        ({"dataset__categories": []}, "dataset.categories: must be 'all' or a non-empty list"),
        ({"dataset__image_sizes": {"a": [0, 4]}}, "dataset.image_sizes.a[0]: Input should be greater than"),
        ({"scoring__reweight": 1}, "scoring.reweight: Input should be a valid boolean (got 1)"),
        ({"scoring__index": "annoy"}, "scoring.index: unknown scoring.index 'annoy'; choose one of ['exact', 'hnsw',"),
        ({"scoring__hnsw__m": 1}, "scoring.hnsw.m: Input should be greater than or equal to 2"),
        ({"scoring__ivf__nprobe": 0}, "scoring.ivf.nprobe: Input should be greater than or equal to 1"),
        ({"scoring__ivf__nlists": 8}, "scoring.ivf.nlists: unknown key (a typo?); known keys: nlist, nprobe"),
        ({"scoring__query_dtype": "int8"}, "scoring.query_dtype: unknown scoring.query_dtype 'int8'"),
        (
            {"scoring__approximate_index_above": 200000},
            "scoring: scoring.approximate_index_above was replaced by scoring.index (exact | ivf | hnsw)",
        ),
        ({"extraction__neighbourhood": 2}, "extraction.neighbourhood: must be a positive odd number"),
        ({"extraction__batch_size": 0}, "extraction.batch_size: Input should be greater than or equal to 1"),
        ({"federation__rounds": 0}, "federation.rounds: Input should be greater than or equal to 1"),
        ({"federation__partition": "random"}, "federation.partition: unknown partition 'random'"),
        ({"federation__clients": {"a": []}}, "federation.clients: client 'a' must hold a non-empty list"),
        ({"export__format": "png"}, "export.format: unknown export format 'png'"),
        ({"report__spro_limit": 0.05}, "report.spro_limit: must be one of the strings"),
    ],
)
def test_bad_values_are_named_by_their_path(changes, expected):
    problems = _problems(**changes)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_typos_and_missing_keys_are_named():
    params = _base()
    params["coreset"]["ratoi"] = 0.1
    del params["scoring"]["sigma"]
    del params["report"]
    problems = parameter_problems(params)
    assert problems[0].startswith("coreset.ratoi: unknown key (a typo?); known keys: denoise, denoise_by_category,")
    assert problems[1].startswith("scoring.sigma: missing")
    assert problems[2].startswith("report: missing block")


def test_partition_needs_its_settings():
    assert _problems(federation__partition="iid", federation__num_clients=None) == [
        "federation: partition 'iid' needs federation.num_clients"
    ]
    assert _problems(federation__partition="dirichlet", federation__alpha=None) == [
        "federation: partition 'dirichlet' needs federation.alpha"
    ]


def test_one_error_lists_every_problem():
    with pytest.raises(ParameterError) as caught:
        validate_parameters(_with(seed="7", coreset__ratio=2.0, aggregation__strategy="x"))
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "seed",
        "coreset.ratio",
        "aggregation.strategy",
    ]
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "seed:" in message and "coreset.ratio:" in message and "aggregation.strategy:" in message


def test_unknown_top_level_blocks_are_allowed_and_logged(caplog):
    params = _base()
    params["generative"] = {"anything": 1}
    with caplog.at_level(logging.DEBUG, logger="fedpatchcore.params_schema"):
        assert parameter_problems(params) == []
    assert "generative" in caplog.text


def test_privacy_is_checked():
    assert _problems(privacy__epsilon=0) == ["privacy.epsilon: Input should be greater than 0 (got 0)"]
    [problem] = _problems(privacy__unit="pixel")
    assert problem.startswith("privacy.unit: unknown privacy unit 'pixel'")
    [problem] = _problems(privacy__enabled="yes")
    assert problem.startswith("privacy.enabled: must be true or false")


def test_denoising_and_the_calibrated_consensus_are_checked():
    [problem] = _problems(coreset__denoise="median")
    assert problem.startswith("coreset.denoise: unknown denoise method 'median'")
    [problem] = _problems(coreset__denoise_by_category={"metal_plate": "median"})
    assert "unknown denoise method of metal_plate 'median'" in problem
    assert _problems(coreset__denoise_share=1.0) == ["coreset.denoise_share: Input should be less than 1 (got 1.0)"]
    assert _problems(coreset__denoise="lof", scoring__soft_weights=True) == []
    # a DP client never sees raw patch vectors: denoising them is refused, whatever the variant
    params = _with(coreset__denoise="lof", privacy__enabled=True)
    [problem] = parameter_problems(params)
    assert problem.startswith("coreset.denoise: patch denoising scores the client's raw patch vectors")
    params = _with(privacy__enabled=True)
    params["variants"] = {"private": _with(privacy__enabled=True, coreset__denoise_by_category={"metal_plate": "knn"})}
    [problem] = parameter_problems(params)
    assert problem.startswith("variants.private.coreset.denoise: patch denoising")
    [problem] = _problems(aggregation__strategy="calibrated_consensus")
    assert problem.startswith("aggregation.strategy: 'calibrated_consensus' calibrates each client")
    assert _problems(aggregation__strategy="calibrated_consensus", coreset__upload_folds=True) == []


def test_trust_and_heterogeneity_are_checked():
    assert _problems(trust__min_trust=1.5) == ["trust.min_trust: Input should be less than or equal to 1 (got 1.5)"]
    [problem] = _problems(heterogeneity={"1": {"noise_sigma": "high"}})
    assert problem.startswith("heterogeneity: heterogeneity.1.noise_sigma must be a number")


def test_comparison_variants_accept_block_overrides_and_check_their_keys():
    block_overrides = {
        "federated_iid": {"federation": {"partition": "iid"}, "aggregation": {"strategy": "concatenate"}},
        "plain": None,
    }
    assert _problems(comparison__variants=block_overrides) == []
    [problem] = _problems(comparison__variants={"federated_iid": {"partition": "iid"}})
    assert problem.startswith("comparison.variants: federated_iid.partition: not a parameter block")
    labelled = {"noisy": {"labels": {"scenario": "noise"}, "heterogeneity": {"1": {"noise_sigma": 0.1}}}}
    assert _problems(comparison__variants=labelled) == []
    [problem] = _problems(comparison__variants={"v1": {"federation": {"partiton": "iid"}}})
    assert problem == "comparison.variants: v1.federation.partiton: unknown key"
    [problem] = _problems(comparison__variants={"bad.name": {}})
    assert problem.startswith("comparison.variants: variant name 'bad.name' must be a letter followed by letters")
    [problem] = _problems(comparison__variants={"centralized": {}})
    assert "reserved" in problem


@pytest.mark.parametrize("name", ["_hidden", "1st", "a-b", "federated", "centralized", "fine_name2"])
def test_the_schema_and_the_pipeline_shape_judge_variant_names_alike(name):
    """One rule (structure.variant_name_problem): the schema refuses exactly what the build refuses."""
    from fedpatchcore import structure

    refused_by_schema = bool(_problems(comparison__enabled=True, comparison__variants={name: {}}))
    parameters = {**_base(), "comparison": {"enabled": True, "variants": {name: {}}}}
    try:
        structure.resolve_variants(parameters)
        refused_by_build = False
    except ValueError:
        refused_by_build = True
    assert refused_by_schema == refused_by_build == (name != "fine_name2")


def test_resolved_variants_are_validated_with_the_same_models():
    params = _base()
    good = copy.deepcopy(params)
    bad = copy.deepcopy(params)
    bad["aggregation"]["strategy"] = "nope"
    bad["coreset"]["ratio"] = 0
    params["variants"] = {"federated": good, "federated_iid": bad}
    assert parameter_problems(params) == [
        "variants.federated_iid.coreset.ratio: Input should be greater than 0 (got 0)",
        "variants.federated_iid.aggregation.strategy: unknown strategy 'nope'; choose one of "
        "['calibrated_consensus', 'concatenate', 'consensus', 'diversity', 'federated_coreset', 'trust']",
    ]
    params["variants"] = {"broken": 3}
    assert parameter_problems(params) == ["variants.broken: must be the variant's parameter blocks, got 3"]


def test_registry_names_are_looked_up_when_validating(monkeypatch):
    from fedpatchcore.core.federation import aggregation

    assert _problems(aggregation__strategy="trust_weighted")
    monkeypatch.setitem(aggregation.STRATEGIES, "trust_weighted", lambda *a, **k: None)
    assert _problems(aggregation__strategy="trust_weighted") == []


def test_new_blocks_register_with_a_decorator(monkeypatch):
    monkeypatch.setattr("fedpatchcore.params_schema.BLOCKS", dict(BLOCKS))
    monkeypatch.setattr("fedpatchcore.params_schema.KNOWN_BLOCKS", list(KNOWN_BLOCKS))

    @block("generative")
    class GenerativeParams(Block):
        enabled: bool = False

    params = _base()
    assert parameter_problems(params) == ["generative: missing block (expected in conf/base/parameters*.yml)"]
    params["generative"] = {"enabled": "yes"}
    assert parameter_problems(params)[0].startswith("generative.enabled: Input should be a valid boolean")
    params["generative"] = {"enabled": True}
    assert parameter_problems(params) == []


def test_only_some_blocks_can_be_checked():
    params = _with(seed="7", federation__rounds=0)
    assert parameter_problems(params, blocks=["federation"]) == [
        "federation.rounds: Input should be greater than or equal to 1 (got 0)"
    ]


def test_experts_need_a_validation_split_and_no_privacy():
    problems = _problems(experts__enabled=True)
    assert any(p.startswith("experts.enabled: needs validation.enabled") for p in problems)
    assert not _problems(experts__enabled=True, validation__enabled=True)
    private = _problems(experts__enabled=True, validation__enabled=True, privacy__enabled=True)
    assert any("not differentially private" in p for p in private)
    assert any("experts.fusion.candidates" in p for p in _problems(experts__fusion__candidates=["median"]))
    assert any("experts.position.grid" in p for p in _problems(experts__position__grid=0))
    assert any("pseudo_anomaly_kinds" in p for p in _problems(experts__fusion__pseudo_anomaly_kinds=["lasers"]))


@pytest.mark.parametrize(("shots", "ok"), [("all", True), (1, True), (16, True), (0, False), ("few", False), (True, False)])
def test_train_shots_is_all_or_a_number_of_images(shots, ok):
    problems = [p for p in _problems(dataset__train_shots=shots) if p.startswith("dataset.train_shots")]
    assert (not problems) == ok, problems


# --------------------------------------------------------------------------- defaults in one place


def _submodel(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _defaulted(model: type[BaseModel], values: dict, path: tuple[str, ...]) -> dict[tuple[str, ...], Any]:
    """path -> schema default of every key of ``model`` that has one (nested blocks walked where conf sets them)."""
    found = {}
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        if sub is not None and isinstance(values.get(name), dict):
            found.update(_defaulted(sub, values[name], (*path, name)))
        elif not field.is_required():
            found[(*path, name)] = field.get_default(call_default_factory=True)
    return found


def _schema_defaults(params: dict) -> dict[tuple[str, ...], Any]:
    return {
        path: default
        for block, model in BLOCKS.items()
        if isinstance(model, type) and issubclass(model, BaseModel)
        for path, default in _defaulted(model, params[block], (block,)).items()
    }


def test_every_schema_default_is_the_value_conf_base_writes():
    """conf/base is where a default is written; a key's schema default repeats it, never differs."""
    params = _base()
    defaults = _schema_defaults(params)
    assert ("fairness", "min_share") in defaults and ("federation", "flower", "num_cpus") in defaults
    different = {}
    for path, default in defaults.items():
        value = params
        for key in path:
            assert key in value, f"{'.'.join(path)} has a schema default but no line in conf/base"
            value = value[key]
        if value != default:
            different[".".join(path)] = (default, value)
    assert not different, f"schema default vs conf/base: {different}"


def _without(params: dict, paths) -> dict:
    params = copy.deepcopy(params)
    for *parents, key in paths:
        target = params
        for part in parents:
            target = target[part]
        target.pop(key)
    return params


def test_settings_read_a_left_out_key_as_conf_base_writes_it():
    """A key a file may leave out (it has a schema default) means the same to ClientSettings /
    ServerSettings.from_run as conf/base's value: their fallbacks agree with conf/base too."""
    from fedpatchcore.core.federation.client import CLIENT_BLOCKS, ClientSettings
    from fedpatchcore.core.federation.server import SERVER_BLOCKS, ServerSettings

    full = _base()
    read = set(CLIENT_BLOCKS) | set(SERVER_BLOCKS)
    stripped = _without(full, [path for path in _schema_defaults(full) if path[0] in read])
    for client_id in ("metal", "qc"):
        assert ClientSettings.from_run(stripped, client_id) == ClientSettings.from_run(full, client_id)
    assert ServerSettings.from_run(stripped) == ServerSettings.from_run(full)


# --------------------------------------------------------------------------- per-client keys


CATEGORY_CLIENTS = "its clients are ['metal', 'textile', 'electronics', 'qc']"


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"heterogeneity": {"7": {"noise_sigma": 0.1}}}, "heterogeneity.7"),
        ({"aggregation__client_weights": {"ghost": 0.0}}, "aggregation.client_weights.ghost"),
        ({"federation__client_coreset_ratios": {"QC": 0.2}}, "federation.client_coreset_ratios.QC"),
    ],
)
def test_a_per_client_key_must_name_a_client_of_the_partition(changes, path):
    params = _with(comparison__enabled=False, **changes)
    [problem] = parameter_problems(params)
    assert problem == f"{path}: no client '{path.rsplit('.', 1)[1]}' in the partition (federation.partition: category); {CATEGORY_CLIENTS}"
    fine = _with(comparison__enabled=False, heterogeneity={"qc": {"noise_sigma": 0.1}}, aggregation__client_weights={"metal": 0.5})
    assert parameter_problems(fine) == []


def test_per_client_keys_are_checked_against_each_variants_own_partition():
    from fedpatchcore.config_loader import project_parameters

    runtime = {
        "heterogeneity": {"qc": {"noise_sigma": 0.1}},  # a client of the category layout ...
        "comparison": {"variants": {"federated_iid": {"federation": {"partition": "iid"}}}},  # ... not of 1..4
    }
    problems = parameter_problems(project_parameters(REPO_ROOT / "conf", env="base", runtime_params=runtime))
    assert problems == [
        "variants.federated_iid.heterogeneity.qc: no client 'qc' in the partition (federation.partition: iid); "
        "its clients are ['1', '2', '3', '4']"
    ]
    runtime["comparison"]["variants"]["federated_iid"]["heterogeneity"] = {"1": {"noise_sigma": 0.1}}
    assert parameter_problems(project_parameters(REPO_ROOT / "conf", env="base", runtime_params=runtime)) == []


def test_leave_one_out_names_clients_of_its_base_run():
    from fedpatchcore.config_loader import project_parameters

    params = project_parameters(REPO_ROOT / "conf", env="robustness")
    assert parameter_problems(params) == []
    dropped = params["comparison"]["leave_one_out"]["dropped"]
    params["comparison"]["leave_one_out"]["dropped"] = {**dropped, "9": next(iter(dropped.values()))}
    [problem] = parameter_problems(params)
    assert problem.startswith("comparison.leave_one_out.dropped.9: no client '9' in the partition")
