"""The schema of the run parameters, checked once before any node runs.

Every parameter block of ``conf/base/parameters*.yml`` has a pydantic model here (``seed``, a
plain value, has an annotated type). :func:`validate_parameters` checks a run's merged
parameters (conf environment + ``--params``) against them and raises one
:class:`ParameterError` listing every problem as ``<parameter path>: <message>``, e.g.::

    seed: Input should be a valid integer (got '7'; a quoted number is a string in YAML)
    coreset.ratio: Input should be less than or equal to 1 (got 1.5)
    aggregation.strategy: unknown strategy 'fedavg'; choose one of ['concatenate', ...]
    federation.partiton: unknown key (a typo?); known keys: alpha, client_coreset_ratios, ...

A key's default here is its value in ``conf/base`` (a test holds them equal): conf/base is the
one place defaults are written, the schema only repeats them for a key a file leaves out.

Types are strict (``"7"`` is not an integer, ``1`` is not a boolean); names that come from a
registry (``aggregation.strategy``, ``backbone.name``) are looked up when validating, so
strategies and backbones registered later are accepted without touching this file.

Extending it (a new block, e.g. ``trust``)::

    @block("trust")
    class TrustParams(Block):
        enabled: bool = False
        min_score: float = Field(ge=0, le=1)

A block listed in :data:`KNOWN_BLOCKS` must be present in the parameters; a top-level key that
is not known is allowed (logged at debug level) so blocks can be added in conf before their
model. ``variants`` (reserved) maps each variant name to that variant's full resolved
parameters; each is validated with the same models and reported as
``variants.<name>.<block>.<key>``. Nothing here imports Kedro.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from fedpatchcore.core.common.errors import InputError
from fedpatchcore.structure import VARIANTS_KEY, variant_name_problem

logger = logging.getLogger(__name__)

__all__ = [
    "BLOCKS",
    "KNOWN_BLOCKS",
    "RESERVED_KEYS",
    "Block",
    "ParameterError",
    "block",
    "parameter_problems",
    "validate_parameters",
]

#: Block name -> pydantic type (a :class:`Block` model, or an annotated type for plain values).
BLOCKS: dict[str, Any] = {}
#: Every top-level parameter key this schema knows: the blocks plus the reserved keys.
KNOWN_BLOCKS: list[str] = []
#: Top-level keys that are not blocks. ``variants``: variant name -> that variant's resolved parameters.
RESERVED_KEYS = (VARIANTS_KEY,)
KNOWN_BLOCKS.extend(RESERVED_KEYS)

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ParameterError(InputError):
    """The run's parameters (or the dataset they point at) have problems; ``problems`` lists them.

    An :class:`~fedpatchcore.core.common.errors.InputError`: ``kedro run`` prints the message
    alone (``fedpatchcore.cli.run``)."""

    def __init__(self, problems: list[str], heading: str | None = None):
        self.problems = list(problems)
        heading = heading or (
            "Invalid parameters (fix them in conf/<env>/parameters*.yml or the --params of this run)"
        )
        super().__init__(heading + ":\n  - " + "\n  - ".join(self.problems))


def block(name: str) -> Callable[[type], type]:
    """Class decorator registering a model as the schema of the parameter block ``name``."""

    def register(model: type) -> type:
        register_block(name, model)
        return model

    return register


def register_block(name: str, schema: Any) -> None:
    """Register ``schema`` (a model or an annotated type) for the top-level key ``name``."""
    BLOCKS[name] = schema
    _ADAPTERS.pop(name, None)
    if name not in KNOWN_BLOCKS:
        KNOWN_BLOCKS.append(name)


_ADAPTERS: dict[str, TypeAdapter] = {}


def _adapter(name: str) -> TypeAdapter:
    if name not in _ADAPTERS:
        _ADAPTERS[name] = TypeAdapter(BLOCKS[name])
    return _ADAPTERS[name]


class Block(BaseModel):
    """Base of a block with fixed keys: strict types, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------- helpers

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]
Ratio = Annotated[float, Field(gt=0, le=1)]
Size = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]


def _one_of(kind: str, value: Any, known: list[str] | tuple[str, ...]) -> Any:
    if value not in known:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {sorted(known)}")
    return value


def _device(value: str) -> str:
    if not _DEVICE.match(value.strip().lower()):
        raise ValueError(f"unknown device {value!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<n>'")
    return value


# --------------------------------------------------------------------------- blocks


register_block("seed", Annotated[int, Field(ge=0, strict=True)])


class SyntheticParams(Block):
    image_size: Annotated[list[Annotated[int, Field(ge=8)]], Field(min_length=2, max_length=2)]
    n_train: PositiveInt
    n_test_good: NonNegativeInt
    n_test_per_defect: NonNegativeInt


@block("dataset")
class DatasetParams(Block):
    format: str
    root: Annotated[str, Field(min_length=1)]
    categories: Any = "all"
    image_sizes: dict[str, Size | None] | None = None
    train_fraction: dict[str, Ratio] = {}
    train_shots: PositiveInt | str = "all"
    synthetic: SyntheticParams | None = None

    @field_validator("train_shots")
    @classmethod
    def _shots(cls, value: int | str) -> int | str:
        if isinstance(value, str) and value != "all":
            raise ValueError(f"must be 'all' or a number of training images per category (1, 2, 4, 8, 16 ...), got {value!r}")
        return value

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from fedpatchcore.core.data.index import DATASET_FORMATS

        return _one_of("dataset format", value, DATASET_FORMATS)

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: Any) -> Any:
        if isinstance(value, str) and value:
            return value  # "all" or one category name
        if isinstance(value, list) and value and all(isinstance(c, str) and c for c in value):
            return value
        raise ValueError(f"must be 'all' or a non-empty list of category names, got {value!r}")

    @model_validator(mode="after")
    def _synthetic_settings(self) -> DatasetParams:
        if self.format == "synthetic" and self.synthetic is None:
            raise ValueError("dataset.format 'synthetic' needs the dataset.synthetic settings block")
        return self


Layers = Annotated[list[str | int], Field(min_length=2, max_length=2)]


def _known_backbone_name(value: str) -> str:
    from fedpatchcore.core.features.backbones import available_backbones, is_known_backbone

    if not is_known_backbone(value):
        raise ValueError(
            f"unknown backbone {value!r}; choose one of {sorted(available_backbones())} or timm:<model_name>"
        )
    return value


@block("backbone")
class BackboneParams(Block):
    name: str
    weights_path: str | None = None
    allow_download: bool = False
    device: str = "auto"
    layers: Layers | None = None

    _known_backbone = field_validator("name")(classmethod(lambda cls, value: _known_backbone_name(value)))

    _device = field_validator("device")(classmethod(lambda cls, value: _device(value)))


@block("extraction")
class ExtractionParams(Block):
    batch_size: PositiveInt
    num_threads: NonNegativeInt | None = 2  # 0 / null: leave torch's thread count as it is
    num_workers: NonNegativeInt
    scratch_dir: Annotated[str, Field(min_length=1)]
    neighbourhood: PositiveInt

    @field_validator("neighbourhood")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be a positive odd number (1, 3, 5, ...), got {value}")
        return value


@block("coreset")
class CoresetParams(Block):
    ratio: Ratio
    max_size: PositiveInt | None  # null: no bound (conf/base holds the project's bound)
    total_size: PositiveInt | None = None
    min_rows: PositiveInt = 1
    projection_dim: PositiveInt | None  # null: k-center on full vectors (conf/base: 128)
    num_starts: PositiveInt = 1
    device: str = "auto"
    denoise: str = "none"
    denoise_share: Annotated[float, Field(ge=0, lt=1)] = 0.05
    denoise_radius: NonNegativeInt = 1
    denoise_neighbours: PositiveInt = 3
    denoise_min_score: Annotated[float, Field(ge=1)] = 1.3
    denoise_image_gate: Annotated[float, Field(gt=0)] | None = 3.5
    denoise_by_category: dict[str, str] = {}
    upload_folds: bool = False

    _device = field_validator("device")(classmethod(lambda cls, value: _device(value)))

    @field_validator("denoise")
    @classmethod
    def _known_denoise(cls, value: str) -> str:
        from fedpatchcore.core.coreset.denoise import METHODS

        return _one_of("denoise method", value, METHODS)

    @field_validator("denoise_by_category")
    @classmethod
    def _known_denoise_per_category(cls, value: dict[str, str]) -> dict[str, str]:
        from fedpatchcore.core.coreset.denoise import METHODS

        for category, method in value.items():
            _one_of(f"denoise method of {category}", method, METHODS)
        return value


class IvfParams(Block):
    nlist: PositiveInt | None = None
    nprobe: PositiveInt = 8


class HnswParams(Block):
    m: Annotated[int, Field(ge=2)] = 32
    ef_construction: PositiveInt = 40
    ef_search: PositiveInt = 64


@block("scoring")
class ScoringParams(Block):
    sigma: Annotated[float, Field(ge=0)]
    reweight: bool
    reweight_neighbours: PositiveInt
    batch_size: PositiveInt
    query_patches: PositiveInt | None = None
    query_dtype: str = "float32"
    index: str = "exact"
    ivf: IvfParams = IvfParams()
    hnsw: HnswParams = HnswParams()
    image_score: str = "max"
    topk: PositiveInt = 10
    soft_weights: bool = False

    @field_validator("image_score")
    @classmethod
    def _known_image_score(cls, value: str) -> str:
        return _one_of("image score", value, ("max", "topk_mean"))

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, values: Any) -> Any:
        if isinstance(values, dict) and "approximate_index_above" in values:
            raise ValueError(
                "scoring.approximate_index_above was replaced by scoring.index (exact | ivf | hnsw) "
                "and its scoring.ivf / scoring.hnsw settings"
            )
        return values

    @field_validator("index")
    @classmethod
    def _known_index(cls, value: str) -> str:
        from fedpatchcore.core.banks.knn import INDEX_KINDS

        return _one_of("scoring.index", value, INDEX_KINDS)

    @field_validator("query_dtype")
    @classmethod
    def _known_query_dtype(cls, value: str) -> str:
        return _one_of("scoring.query_dtype", value, ("float32", "float16"))

    @model_validator(mode="after")
    def _reweight_needs_max(self) -> ScoringParams:
        if self.reweight and self.image_score != "max":
            raise ValueError("scoring.reweight applies to image_score 'max' only")
        return self


@block("validation")
class ValidationParams(Block):
    enabled: bool = False
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2


class TunedBackbone(Block):
    name: str
    layers: Layers | None = None
    weights_path: str | None = None

    _known_backbone = field_validator("name")(classmethod(lambda cls, value: _known_backbone_name(value)))


class TunedExtraction(Block):
    neighbourhood: PositiveInt = 3


class TunedScoring(Block):
    image_score: str = "max"
    topk: PositiveInt = 10
    reweight: bool = False
    reweight_neighbours: PositiveInt = 9


class TunedEntry(Block):
    """One category's setting as the tune pipeline writes it (conf/tuned/parameters.yml)."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)  # val_auroc may be written as 1

    setting: str | None = None  # its readable name (informative)
    val_auroc: float | None = None  # its validation AUROC (informative)
    backbone: TunedBackbone
    image_size: Size | None = None
    extraction: TunedExtraction = TunedExtraction()
    scoring: TunedScoring = TunedScoring()

    @model_validator(mode="after")
    def _valid_setting(self) -> TunedEntry:
        from fedpatchcore.core.features.setting import Setting

        Setting.from_tuned(self.model_dump())  # raises ValueError on an impossible combination
        return self


register_block("tuned", dict[str, TunedEntry])


class TuneScoring(Block):
    image_score: str = "max"
    topk: PositiveInt = 10
    reweight: bool = False
    num_neighbours: PositiveInt = 9


@block("tune")
class TuneParams(Block):
    backbones: Annotated[list[str], Field(min_length=1)]
    layers: dict[str, list[Layers | None]] = {}
    weights_paths: dict[str, str] = {}
    image_sizes: Annotated[list[Size | None], Field(min_length=1)] = [None]
    neighbourhoods: Annotated[list[PositiveInt], Field(min_length=1)] = [3]
    scorings: Annotated[list[TuneScoring], Field(min_length=1)]
    pseudo_anomalies_per_image: PositiveInt = 4
    min_gain: Annotated[float, Field(ge=0)] = 0.0
    categories: list[str] | None = None
    denoise_methods: list[str] = []
    planted_share: Annotated[float, Field(ge=0, lt=1)] = 0.15

    @field_validator("denoise_methods")
    @classmethod
    def _known_denoise_methods(cls, value: list[str]) -> list[str]:
        from fedpatchcore.core.coreset.denoise import METHODS

        for method in value:
            _one_of("denoise method", method, METHODS)
        return value

    @field_validator("backbones")
    @classmethod
    def _known_backbones(cls, value: list[str]) -> list[str]:
        for name in value:
            _known_backbone_name(name)
        return value


class ExpertPositionParams(Block):
    grid: PositiveInt = 16
    shift: NonNegativeInt = 0


class ExpertCompositionParams(Block):
    clusters: Annotated[list[Annotated[int, Field(ge=2)]], Field(min_length=1)] = [4, 8, 16]
    lloyd_rounds: NonNegativeInt = 3


class ExpertFusionParams(Block):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)  # min_gain may be written as 0

    candidates: Annotated[list[str], Field(min_length=1)]
    min_gain: Annotated[float, Field(ge=0)] = 0.02
    pseudo_anomaly_kinds: Annotated[list[str], Field(min_length=1)]
    pseudo_anomalies_per_image: PositiveInt = 7

    @field_validator("candidates", "pseudo_anomaly_kinds")
    @classmethod
    def _known_names(cls, value: list[str], info) -> list[str]:
        from fedpatchcore.core.experts.fusion import RULES
        from fedpatchcore.core.tuning.pseudo_anomalies import KNOWN_PSEUDO_ANOMALY_KINDS

        kind, known = ("fusion rule", RULES) if info.field_name == "candidates" else (
            "pseudo-anomaly kind",
            KNOWN_PSEUDO_ANOMALY_KINDS,
        )
        for name in value:
            _one_of(kind, name, known)
        return value


@block("experts")
class ExpertsParams(Block):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)  # ridge may be written as 1

    enabled: bool = False
    projection_dim: PositiveInt | None = 32
    ridge: Annotated[float, Field(gt=0)] = 0.01
    position: ExpertPositionParams = ExpertPositionParams()
    composition: ExpertCompositionParams = ExpertCompositionParams()
    fusion: ExpertFusionParams
    logical_defects: list[str]

    @field_validator("enabled", mode="before")
    @classmethod
    def _a_boolean(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value


@block("predict")
class PredictParams(Block):
    input: str | None = None
    pattern: str | None = None
    category: str | None = None
    variant: str = "federated"
    runtime: str = "torch"
    max_false_alarm_rate: Annotated[float, Field(ge=0, lt=1)] = 0.05
    calibration: str = "conformal"
    tile: Size | None = None
    tile_overlap: Annotated[float, Field(ge=0, lt=1)] = 0.25
    overlays: bool = True
    output_dir: Annotated[str, Field(min_length=1)] = "data/08_reporting/predict"

    @field_validator("calibration")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from fedpatchcore.core.scoring.thresholds import CALIBRATION_METHODS

        return _one_of("calibration method", value, CALIBRATION_METHODS)

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        from fedpatchcore.core.scoring.predict import RUNTIMES

        return _one_of("runtime", value, RUNTIMES)


@block("export")
class ExportParams(Block):
    enabled: bool = False
    format: str = "autovi"
    inspector: str | None = None
    onnx_opset: Annotated[int, Field(ge=7)] = 17

    @field_validator("inspector")
    @classmethod
    def _known_inspector(cls, value: str | None) -> str | None:
        return None if value is None else _one_of("inspector format", value, ["onnx"])

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from fedpatchcore.datasets.exported_maps import EXPORTERS

        return _one_of("export format", value, list(EXPORTERS))


@block("mlflow")
class MlflowParams(Block):
    enabled: bool = True


class FlowerParams(Block):
    connect_timeout_s: Annotated[float, Field(gt=0)] = 120
    max_upload_bytes: PositiveInt | None = None
    num_cpus: PositiveInt = 2
    client_cpus: Annotated[float, Field(gt=0)] = 1


@block("federation")
class FederationParams(Block):
    partition: str
    num_clients: PositiveInt | None = 4
    clients: dict[str, Any] | None  # the category layout: conf/base names it (no default here)
    qc_sample_ratio: UnitFloat = 0.1
    alpha: Annotated[float, Field(gt=0)] | None = 0.5
    rounds: PositiveInt = 1
    coverage_quantile: UnitFloat
    client_coreset_ratios: dict[str, Ratio] | None = {}
    train_per_category: PositiveInt | None = None
    engine: str = "inprocess"
    round_timeout_s: Annotated[float, Field(gt=0)] = 600
    flower: FlowerParams = FlowerParams()

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        return _one_of("federation engine", value, ("inprocess", "flower"))

    @field_validator("partition")
    @classmethod
    def _known_partition(cls, value: str) -> str:
        from fedpatchcore.core.federation.partition import SCHEMES

        return _one_of("partition", value, SCHEMES)

    @field_validator("clients")
    @classmethod
    def _clients(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for client, categories in (value or {}).items():
            if categories == "all":
                continue
            if not (
                isinstance(categories, list) and categories and all(isinstance(c, str) for c in categories)
            ):
                raise ValueError(
                    f"client {client!r} must hold a non-empty list of categories or 'all', got {categories!r}"
                )
        return value

    @model_validator(mode="after")
    def _partition_needs(self) -> FederationParams:
        if self.partition == "category" and not self.clients:
            raise ValueError(
                "partition 'category' needs federation.clients (client id -> categories or 'all')"
            )
        if self.partition in ("iid", "dirichlet") and self.num_clients is None:
            raise ValueError(f"partition {self.partition!r} needs federation.num_clients")
        if self.partition == "dirichlet" and self.alpha is None:
            raise ValueError("partition 'dirichlet' needs federation.alpha")
        return self


@block("aggregation")
class AggregationParams(Block):
    strategy: str
    global_bank_size: PositiveInt | None = None
    total_bank_size: PositiveInt | None = None
    min_clients: PositiveInt = 1
    options: dict[str, Any] = {}
    client_weights: dict[str, Annotated[float, Field(ge=0)]] = {}

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from fedpatchcore.core.federation.aggregation import STRATEGIES

        return _one_of("strategy", value, list(STRATEGIES))


class LeaveOneOutParams(Block):
    base: str
    dropped: dict[str, str]


@block("comparison")
class ComparisonParams(Block):
    enabled: bool = True
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")] = "comparison"
    centralized: bool = True
    groups: str = "categories"
    labels: dict[str, dict[str, Any]] = {}
    plot_x: str | None = None
    leave_one_out: LeaveOneOutParams | None = None
    # variant name -> overrides: {block: {key: value}}, plus optional `labels` for the table
    # (the experiment's own: conf/base or the experiment's environment names them, no default here)
    variants: dict[str, dict[str, Any] | None] | None

    @field_validator("groups")
    @classmethod
    def _known_grouping(cls, value: str) -> str:
        from fedpatchcore.core.reporting.experiments import GROUPINGS

        return _one_of("grouping", value, GROUPINGS)

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        problems = []
        for name, override in (value or {}).items():
            problem = variant_name_problem(name)
            if problem:
                problems.append(f"variant name {name!r} {problem}")
            problems += [f"{name}.{p}" for p in _override_problems(override or {})]
        if problems:
            raise ValueError("; ".join(problems))
        return value


@block("trust")
class TrustParams(Block):
    alpha: Annotated[float, Field(ge=0)] = 1.0
    beta: Annotated[float, Field(ge=0)] = 1.0
    gamma: Annotated[float, Field(ge=0)] = 1.0
    min_trust: UnitFloat = 0.5
    confirm_factor: Annotated[float, Field(gt=0)] = 1.0
    max_rows: Annotated[int, Field(ge=2)] = 2000

    @model_validator(mode="after")
    def _some_weight(self) -> TrustParams:
        if self.alpha + self.beta + self.gamma <= 0:
            raise ValueError("trust.alpha, trust.beta and trust.gamma cannot all be 0")
        return self


def _heterogeneity(value: Any) -> Any:
    from fedpatchcore.core.federation.heterogeneity import parse_heterogeneity

    parse_heterogeneity(value)  # raises ValueError naming heterogeneity.<client>.<key>
    return value


register_block("heterogeneity", Annotated[dict[Any, Any], AfterValidator(_heterogeneity)])


@block("fairness")
class FairnessParams(Block):
    mode: str = "none"
    group_by: str = "category"
    min_share: UnitFloat = 0.1

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        from fedpatchcore.core.federation.fairness import MODES

        return _one_of("fairness mode", value, MODES)

    @field_validator("group_by")
    @classmethod
    def _known_grouping(cls, value: str) -> str:
        from fedpatchcore.core.federation.fairness import GROUP_BY

        return _one_of("fairness grouping", value, GROUP_BY)


@block("explain")
class ExplainParams(Block):
    image: str | None = None
    category: str | None = None
    variant: str = "federated"
    client: str | None = None
    top_patches: PositiveInt = 3
    neighbours: PositiveInt = 4
    shap_background: PositiveInt = 10
    shap_max_evals: PositiveInt | None = None
    shap_top_dimensions: PositiveInt = 10


class AuditParams(Block):
    enabled: bool = False
    statistic: str = "min"
    max_images_per_category: PositiveInt | None = None

    @field_validator("statistic")
    @classmethod
    def _known_statistic(cls, value: str) -> str:
        return _one_of("audit statistic", value, ("min", "mean", "max"))


class SummaryParams(Block):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    centres: PositiveInt = 64
    rounds: NonNegativeInt = 2
    residual_clip: Annotated[float, Field(gt=0)] = 20.0
    contribution_clip: Annotated[float, Field(gt=0)] = 0.25
    min_count: Annotated[float, Field(ge=0)] = 2.0
    radius_floor: Annotated[float, Field(gt=0, le=1)] = 0.05
    public_images: PositiveInt = 2
    public_root: str | None = None


class SecureAggregationParams(Block):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    max_dropouts: NonNegativeInt = 0
    num_shares: Annotated[float, Field(gt=0)] = 1.0
    reconstruction_threshold: Annotated[float, Field(gt=0)] = 0.5
    quantization_bits: Annotated[int, Field(ge=8, le=30)] = 22


class CanaryAuditParams(Block):
    enabled: bool = False
    trials: Annotated[int, Field(ge=20)] = 400
    images: Annotated[int, Field(ge=2)] = 8
    dim: PositiveInt = 16


class DpCvaeParams(Block):
    """``privacy.dp_cvae``: the DP-CVAE release (ranges and their relations are checked again by
    ``core/privacy/generative.CVAESettings``, which names the key)."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    latent_dim: PositiveInt = 16
    hidden_dim: PositiveInt = 64
    patches_per_image: PositiveInt = 16
    position_grid: NonNegativeInt = 4
    feature_scale: Annotated[float, Field(gt=0)] = 2.5
    kl_weight: Annotated[float, Field(ge=0)] = 1.0
    gcr_weight: Annotated[float, Field(ge=0)] = 1.0
    gcr_bandwidth: Annotated[float, Field(gt=0)] | None = None
    rounds: PositiveInt = 5
    local_epochs: PositiveInt = 5
    batch_images: PositiveInt = 256
    learning_rate: Annotated[float, Field(gt=0)] = 0.01
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    holdout_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    report_epsilon_share: Annotated[float, Field(gt=0, lt=1)] = 0.1
    report_clip: Annotated[float, Field(gt=0)] = 4.0
    averaging: str = "fedavg"
    samples_per_category: PositiveInt = 4000
    bank_size: PositiveInt = 400
    fidelity_projections: PositiveInt = 64
    fidelity_max_rows: PositiveInt = 1000
    num_threads: PositiveInt = 1

    @model_validator(mode="after")
    def _settings_hold(self) -> DpCvaeParams:
        from fedpatchcore.core.privacy.generative import CVAESettings

        CVAESettings.from_parameters(self.model_dump())  # raises ValueError naming privacy.dp_cvae.<key>
        return self


@block("privacy")
class PrivacyParams(Block):
    # Numbers may be written as integers in YAML (epsilon: 1): not strict for these.
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    enabled: bool = False
    mechanism: str = "rows"
    reproducible_not_private: bool = False
    max_epsilon: Annotated[float, Field(gt=0)] | None = None
    ledger_dir: str | None  # where the sites' ledgers persist: conf/base names it (no default here)
    summary: SummaryParams = SummaryParams()
    secure_aggregation: SecureAggregationParams = SecureAggregationParams()
    canary_audit: CanaryAuditParams = CanaryAuditParams()
    epsilon: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    clip_norm: Annotated[float, Field(gt=0)] = 64.0
    patches_per_image: PositiveInt = 16
    projection_dim: PositiveInt | None = None
    unit: str = "image"
    accountant: str = "prv"
    noise_seed: NonNegativeInt | None = None
    audit: AuditParams = AuditParams()
    dp_cvae: DpCvaeParams = DpCvaeParams()

    @field_validator("enabled", "reproducible_not_private", mode="before")
    @classmethod
    def _a_boolean(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value

    @field_validator("mechanism")
    @classmethod
    def _known_mechanism(cls, value: str) -> str:
        from fedpatchcore.core.privacy.release import MECHANISMS

        return _one_of("privacy mechanism", value, MECHANISMS)

    @model_validator(mode="after")
    def _seed_only_when_not_private(self) -> PrivacyParams:
        if self.noise_seed is not None and not self.reproducible_not_private:
            raise ValueError(
                "noise_seed makes the noise reproducible by whoever knows it: leave it null, or set "
                "reproducible_not_private: true (every published budget then says private: false)"
            )
        if self.mechanism == "summary" and self.unit != "image":
            raise ValueError("mechanism summary protects whole images: unit must be image")
        return self

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, value: str) -> str:
        from fedpatchcore.core.privacy.release import UNITS

        return _one_of("privacy unit", value, UNITS)

    @field_validator("accountant")
    @classmethod
    def _known_accountant(cls, value: str) -> str:
        from fedpatchcore.core.privacy.accounting import ACCOUNTANTS

        return _one_of("accountant", value, ACCOUNTANTS)


@block("report")
class ReportParams(Block):
    overlays_per_group: NonNegativeInt
    spro_limit: str
    spro_max_fpr: Annotated[float, Field(gt=0, le=1)] = 0.3
    overlay_jpeg_quality: Annotated[int, Field(ge=1, le=95)] | None = 80

    @field_validator("spro_limit", mode="before")
    @classmethod
    def _known_limit(cls, value: Any) -> Any:
        from fedpatchcore.core.evaluation.metrics import DEFAULT_INTEGRATION_LIMITS

        known = [str(float(limit)) for limit in DEFAULT_INTEGRATION_LIMITS]
        if value not in known:
            raise ValueError(
                f'must be one of the strings {known} (quote it in YAML: spro_limit: "0.05"), got {value!r}'
            )
        return value


def _override_problems(override: Mapping[str, Any]) -> list[str]:
    """Unknown keys in one comparison variant's overrides (values are checked once resolved)."""
    if not isinstance(override, Mapping):
        return [f"overrides must be a mapping, got {override!r}"]
    problems = []
    pairs = []
    for name, values in override.items():
        if name == "labels":  # columns of the experiment table, not parameters
            continue
        if name not in BLOCKS:
            problems.append(f"{name}: not a parameter block (a variant overrides blocks, e.g. federation: {{...}})")
        elif isinstance(values, Mapping):
            pairs.append((f"{name}.", BLOCKS[name], dict(values)))
    for prefix, model, values in pairs:
        fields = getattr(model, "model_fields", None)
        if not fields or getattr(model, "model_config", {}).get("extra") != "forbid":
            continue
        problems += [f"{prefix}{key}: unknown key" for key in values if key not in fields]
    return problems


# --------------------------------------------------------------------------- validation


def _location(parts: tuple) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _message(error: dict, model: Any) -> str:
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = error.get("input")
    if kind == "missing":
        return "missing (every key of this block is needed; see conf/base/parameters*.yml)"
    if kind == "extra_forbidden":
        fields = sorted(getattr(model, "model_fields", {}))
        return f"unknown key (a typo?); known keys: {', '.join(fields)}"
    if kind in ("int_type", "float_type", "bool_type") and isinstance(value, str):
        return f"{message} (got {value!r}; a quoted value is a string in YAML, write it without quotes)"
    if kind in ("value_error", "assertion_error"):
        return message
    return f"{message} (got {value!r})"


def _block_model_for_location(model: Any, location: tuple) -> Any:
    """The model class that owns the last key of ``location`` (for the list of known keys)."""
    current = model
    for part in location[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return current
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), current)
    return current


def _cross_block_problems(params: Mapping[str, Any], checked: set[str]) -> list[str]:
    """Rules that join two blocks (each already valid on its own)."""
    problems = []
    if {"coreset", "privacy"} <= checked:
        coreset, privacy = params.get("coreset") or {}, params.get("privacy") or {}
        methods = {coreset.get("denoise", "none"), *(coreset.get("denoise_by_category") or {}).values()}
        if privacy.get("enabled", False) and methods - {"none"}:
            problems.append(
                "coreset.denoise: patch denoising scores the client's raw patch vectors, which a differentially "
                "private client never looks at (it chooses among released rows only); set coreset.denoise: none "
                "and coreset.denoise_by_category: {} with privacy.enabled: true"
            )
    if {"aggregation", "coreset"} <= checked:
        strategy = (params.get("aggregation") or {}).get("strategy")
        if strategy == "calibrated_consensus" and not (params.get("coreset") or {}).get("upload_folds", False):
            problems.append(
                "aggregation.strategy: 'calibrated_consensus' calibrates each client on the rows of its other half "
                "of images, which its uploads name only with coreset.upload_folds: true"
            )
    return problems


def _validate_blocks(params: Mapping[str, Any], prefix: str, only: Iterable[str] | None = None) -> list[str]:
    problems: list[str] = []
    for name in BLOCKS if only is None else [b for b in BLOCKS if b in set(only)]:
        path = f"{prefix}{name}"
        if name not in params:
            problems.append(f"{path}: missing block (expected in conf/base/parameters*.yml)")
            continue
        try:
            _adapter(name).validate_python(params[name], strict=True)
        except ValidationError as exc:
            for error in exc.errors():
                location = tuple(error["loc"])
                model = _block_model_for_location(BLOCKS[name], location)
                where = _location((name, *location)) if location else name
                problems.append(f"{prefix}{where}: {_message(error, model)}")
    checked = set(BLOCKS if only is None else only)
    if not problems:
        problems += [f"{prefix}{problem}" for problem in _cross_block_problems(params, checked)]
    for key in params if only is None else ():
        if key not in KNOWN_BLOCKS:
            logger.debug("Parameter block %s%s has no schema yet; not validated", prefix, key)
    return problems


def _setting_problems(params: Mapping[str, Any], prefix: str) -> list[str]:
    """Settings that are valid alone but not together (a block's own checks pass)."""
    problems = []
    experts = params.get("experts")
    if isinstance(experts, Mapping) and experts.get("enabled") is True:
        if not (params.get("validation") or {}).get("enabled"):
            problems.append(
                f"{prefix}experts.enabled: needs validation.enabled: true (each category's fusion rule and the "
                "experts' z-normalisation are chosen on validation images, never on test images)"
            )
        if (params.get("privacy") or {}).get("enabled") is True:
            problems.append(
                f"{prefix}experts.enabled: the experts' statistics are not differentially private; "
                "turn off privacy.enabled or experts.enabled"
            )
    return problems


#: Parameters keyed by client id: every key must name a client of the run's partition.
PER_CLIENT_KEYS: tuple[tuple[str, ...], ...] = (
    ("heterogeneity",),
    ("aggregation", "client_weights"),
    ("federation", "client_coreset_ratios"),
)


def _partition_clients(params: Mapping[str, Any]) -> list[str] | None:
    """The client ids of ``params``' partition (``None`` when the federation block cannot say:
    its own problems are reported with it)."""
    from fedpatchcore.core.federation.partition import client_ids_of

    try:
        return client_ids_of(params["federation"])
    except (KeyError, TypeError, ValueError):
        return None


def _unknown_clients(keys: Iterable[Any], clients: list[str], where: str, federation: Mapping[str, Any]) -> list[str]:
    return [
        f"{where}.{key}: no client '{key}' in the partition (federation.partition: "
        f"{federation.get('partition')}); its clients are {clients}"
        for key in keys
        if str(key) not in clients
    ]


def _client_id_problems(params: Mapping[str, Any], prefix: str, invalid: Iterable[str] = ()) -> list[str]:
    """Per-client keys (:data:`PER_CLIENT_KEYS`) naming a client the partition does not have.

    Such a key used to be ignored without a word (``heterogeneity.<id>``) or noticed only after
    the extraction (``aggregation.client_weights.<id>``). Blocks in ``invalid`` (their values
    have problems already) are not looked at.
    """
    clients = _partition_clients(params)
    if clients is None:
        return []
    problems = []
    for path in PER_CLIENT_KEYS:
        if path[0] in invalid:
            continue
        values: Any = params
        for key in path:
            values = values.get(key) if isinstance(values, Mapping) else None
        if isinstance(values, Mapping):
            problems += _unknown_clients(values, clients, prefix + ".".join(path), params["federation"])
    return problems


def _blocks_of(problems: Iterable[str], prefix: str) -> set[str]:
    """The blocks ``problems`` (``<prefix><block>...: message``) are about."""
    return {p.removeprefix(prefix).split(":")[0].split(".")[0] for p in problems}


def _leave_one_out_problems(params: Mapping[str, Any]) -> list[str]:
    """``comparison.leave_one_out.dropped`` names clients of its ``base`` run's partition."""
    leave_one_out = (params.get("comparison") or {}).get("leave_one_out") or {}
    base = ((params.get(VARIANTS_KEY) or {}).get(leave_one_out.get("base")) or {}) if leave_one_out else {}
    clients = _partition_clients(base) if base else None
    dropped = leave_one_out.get("dropped")
    if clients is None or not isinstance(dropped, Mapping):
        return []
    return _unknown_clients(dropped, clients, "comparison.leave_one_out.dropped", base["federation"])


def parameter_problems(params: Mapping[str, Any], blocks: Iterable[str] | None = None) -> list[str]:
    """Every problem of ``params`` and of each ``params['variants'][<name>]``, as ``path: message``.

    ``blocks``: check only these blocks (default: all of :data:`BLOCKS`).
    """
    if not isinstance(params, Mapping):
        return [f"parameters must be a mapping of blocks, got {type(params).__name__}"]
    problems = _validate_blocks(params, "", blocks)
    if blocks is None:
        problems += _client_id_problems(params, "", _blocks_of(problems, "")) + _leave_one_out_problems(params)
        problems += _setting_problems(params, "")
    shared = set(problems)
    variants = params.get(VARIANTS_KEY)
    if variants is not None:
        if not isinstance(variants, Mapping):
            problems.append(f"variants: must map each variant name to its parameters, got {variants!r}")
        else:
            for name, resolved in variants.items():
                if not isinstance(resolved, Mapping):
                    problems.append(
                        f"variants.{name}: must be the variant's parameter blocks, got {resolved!r}"
                    )
                    continue
                # A variant's resolved parameters hold every block but the experiment's own description.
                variant_blocks = [b for b in (blocks or BLOCKS) if b != "comparison"]
                prefix = f"variants.{name}."
                found = _validate_blocks(
                    {k: v for k, v in resolved.items() if k not in RESERVED_KEYS}, prefix, variant_blocks
                )
                if blocks is None:
                    found += _client_id_problems(resolved, prefix, _blocks_of(found, prefix))
                    found += _setting_problems(resolved, prefix)
                # A problem every variant inherits from the shared parameters is reported once, there.
                problems += [p for p in found if p.removeprefix(prefix) not in shared]
    return problems


def validate_parameters(params: Mapping[str, Any]) -> None:
    """Raise :class:`ParameterError` listing every problem of ``params`` (see the module doc)."""
    problems = parameter_problems(params)
    if problems:
        raise ParameterError(problems)
