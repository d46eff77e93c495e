"""What one client (a factory site) does with its own images, whatever carries the result.

    training images ──extract_features──► patch features (streamed to files on the site)
                    ──select_local_coreset──► local coreset (rows + where each came from);
                          with ``privacy.enabled`` it first releases m clipped, noised vectors
                          per image (core/privacy/release.py, charged to the site's ledger
                          first) and chooses among those only
                    ──build_upload(round, broadcast)──► ClientUpload (what leaves the site)

The local coreset keeps, for every row, the image and patch position it came from; that
provenance never leaves the site. An upload carries only rows, the index of each row in the
local coreset (so the server can say which client row a bank row is), image counts, and
numbers the client reports about itself.

The Kedro client lane and the Flower ClientApp both call these functions.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedpatchcore.core.banks import CategoryBanks, ClientUpload, as_weights, pack, unpack
from fedpatchcore.core.common.fingerprint import values_at
from fedpatchcore.core.common.runtime import resolve_device
from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.coreset.denoise import DenoiseSettings, denoise_feature_file
from fedpatchcore.core.coreset.kcenter import coreset_size, greedy_kcenter
from fedpatchcore.core.coreset.streaming import select_coreset_streaming
from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.features import tuned_settings
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.features.extraction import ExtractedFeatures, extract_patch_features, make_embedder
from fedpatchcore.core.federation.aggregation import covering_radius_estimate, uncovered_rows
from fedpatchcore.core.federation.fairness import FairnessSettings, group_quotas, shapes_client_coreset
from fedpatchcore.core.federation.heterogeneity import (
    MODEL_ONLY_KEYS,
    ClientHeterogeneity,
    ImageDegrader,
    parse_client,
)
from fedpatchcore.core.federation.trust import QualityMeter
from fedpatchcore.core.privacy.ledger import Spent
from fedpatchcore.core.privacy.release import (
    PrivacySettings,
    ReleasedRows,
    charge_release,
    most_exposed,
    release_category,
    release_parameters,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs to know besides its images (the server's run configuration)."""

    client_id: str
    seed: int
    coreset_ratio: float  # fraction of the client's patch vectors kept (per-client override applied)
    coreset_max_size: int | None
    coreset_num_starts: int
    projection_dim: int | None
    coreset_device: str
    coverage_quantile: float  # round r > 1: a row is covered within this quantile of NN distances
    batch_size: int
    num_workers: int
    # What is wrong at this site (experiments simulate it): degradations of its images as read.
    heterogeneity: ClientHeterogeneity = ClientHeterogeneity()
    # Rows kept over all the client's categories (None: ratio × each category's patches) and how
    # they are split among its categories (fairness.group_by: category).
    coreset_total_size: int | None = None
    coreset_min_rows: int = 1  # each category's floor when that budget is split
    fairness: FairnessSettings = FairnessSettings()
    # Differentially private release before the local coreset (disabled: raw rows, as always).
    privacy: PrivacySettings = PrivacySettings()
    # Patch denoising before k-center (coreset.denoise*); per-category methods chosen by validation.
    denoise: DenoiseSettings = DenoiseSettings()
    denoise_by_category: dict[str, DenoiseSettings] = field(default_factory=dict)
    # Uploads say which half of the client's images each row came from (calibrated_consensus).
    upload_folds: bool = False

    def denoise_for(self, category: str) -> DenoiseSettings:
        return self.denoise_by_category.get(category, self.denoise)

    @classmethod
    def from_run(cls, parameters: Mapping[str, Any], client_id: str) -> ClientSettings:
        """Client ``client_id``'s settings from the run's parameters: the one place that turns
        parameters into a client's settings.

        ``parameters``: a variant's resolved parameter blocks (more may be there: only
        :data:`CLIENT_BLOCKS` are read). ``federation.client_coreset_ratios.<client_id>``
        overrides ``coreset.ratio`` for this client, ``heterogeneity.<client_id>`` degrades its
        images, ``privacy`` (absent: disabled) makes its release differentially private.
        """
        run = client_blocks(parameters)
        coreset, extraction = _required(run, "coreset"), _required(run, "extraction")
        federation = run["federation"] or {}
        seed = int(_required(run, "seed"))
        client_id = str(client_id)
        ratios = federation.get("client_coreset_ratios") or {}
        total_size = coreset.get("total_size")
        if total_size is not None and (int(total_size) != total_size or total_size < 1):
            raise ValueError(f"coreset.total_size must be a positive integer or null, got {total_size!r}")
        return cls(
            client_id=client_id,
            seed=seed,
            coreset_ratio=float(ratios.get(client_id, coreset["ratio"])),
            coreset_max_size=coreset["max_size"],
            coreset_num_starts=int(coreset.get("num_starts", 1)),
            projection_dim=coreset["projection_dim"],
            coreset_device=str(coreset.get("device", "auto")),
            coverage_quantile=float(federation.get("coverage_quantile", 0.5)),
            batch_size=int(extraction["batch_size"]),
            num_workers=int(extraction["num_workers"]),
            heterogeneity=parse_client(client_id, (run["heterogeneity"] or {}).get(client_id)),
            coreset_total_size=None if total_size is None else int(total_size),
            coreset_min_rows=int(coreset.get("min_rows", 1)),
            fairness=FairnessSettings.from_parameters(run["fairness"]),
            privacy=PrivacySettings.from_parameters(run["privacy"], seed),
            denoise=DenoiseSettings.from_parameters(coreset),
            denoise_by_category={
                c: DenoiseSettings.from_parameters(coreset, c) for c in coreset.get("denoise_by_category") or {}
            },
            upload_folds=bool(coreset.get("upload_folds", False)),
        )


#: The parameter blocks a client reads, and the only ones: :meth:`ClientSettings.from_run` reads
#: its settings from them, the Kedro client lane's nodes receive exactly these
#: (``pipelines/training``), the Flower server sends them to every site (``flower/rounds.py``),
#: and what a client's work depends on (:func:`feature_inputs`, :func:`coreset_inputs`: which
#: work variants share, when a Flower site rebuilds its coreset) is read from them. ``backbone``
#: and ``extraction`` also build the site's embedder (``make_embedder``).
#:
#: A new client parameter: its line in ``conf/base/parameters*.yml`` and its field in
#: ``params_schema.py`` (inside one of these blocks), and one line of ``from_run``.
CLIENT_BLOCKS = ("seed", "backbone", "extraction", "coreset", "federation", "heterogeneity", "fairness", "privacy")


def client_blocks(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The run's :data:`CLIENT_BLOCKS` (``None`` for an absent one): all a client gets to read."""
    return {name: parameters.get(name) for name in CLIENT_BLOCKS}


def _required(blocks: Mapping[str, Any], name: str) -> Any:
    if blocks.get(name) is None:
        raise ValueError(f"a client's settings need the '{name}' parameter block")
    return blocks[name]


def feature_inputs(parameters: Mapping[str, Any], client_id: str) -> dict[str, Any]:
    """What a client's patch features depend on besides which images it holds.

    The seed, the backbone and extraction blocks, the coreset's projection (the projected copy
    k-center reads is stored with the features) and what ``heterogeneity.<client_id>`` does to
    its images. Read as written (the client's settings check the values when it runs).
    """
    run = client_blocks(parameters)
    paths = [("seed",), ("backbone",), ("extraction",), ("coreset", "projection_dim"), ("heterogeneity", str(client_id))]
    inputs = values_at(run, paths)
    degradation = inputs[f"heterogeneity.{client_id}"]
    if isinstance(degradation, Mapping):  # encoder drift changes a DP-CVAE's training, not the features
        kept = {k: v for k, v in degradation.items() if k not in MODEL_ONLY_KEYS}
        inputs[f"heterogeneity.{client_id}"] = kept or None
    return inputs


def coreset_inputs(parameters: Mapping[str, Any], client_id: str) -> dict[str, Any]:
    """What a client's local coreset (and its first upload) depends on besides which images it holds.

    Its features (:func:`feature_inputs`), the coreset block and this client's
    ``federation.client_coreset_ratios`` entry, the DP release (only what changes the released
    rows: :func:`~fedpatchcore.core.privacy.release.release_parameters`) and the fairness block
    when it shapes the client's coreset (:func:`~fedpatchcore.core.federation.fairness.shapes_client_coreset`).
    """
    run = client_blocks(parameters)
    fairness = dict(run["fairness"] or {})
    shapes = shapes_client_coreset(
        fairness.get("mode", FairnessSettings.mode),
        fairness.get("group_by", FairnessSettings.group_by),
        (run["coreset"] or {}).get("total_size"),
    )
    return {
        **feature_inputs(run, client_id),
        **values_at(run, [("coreset",), ("federation", "client_coreset_ratios", str(client_id))]),
        "privacy": release_parameters(run["privacy"]),
        "fairness": fairness if shapes else None,
    }


@dataclass
class LocalCoreset:
    """A client's coreset per category and, kept on the site, where each row came from."""

    banks: dict[str, np.ndarray]  # category -> (m, d) float32
    image_keys: dict[str, list[str]]  # category -> the client's images the rows were chosen from
    patch_source: dict[str, np.ndarray]  # category -> (m, 3) int64: (image index into image_keys, y, x)
    numbers: dict[str, float] = field(default_factory=dict)  # what the client reports about itself
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # category -> (m,) outlier weight (denoised)
    # What the site's ledger holds for these images after this release (not saved with the coreset).
    spent: Spent | None = None

    @property
    def n_images(self) -> dict[str, int]:
        return {category: len(keys) for category, keys in self.image_keys.items()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return pack(
            bank=self.banks,
            image_keys={c: np.asarray(keys, dtype=str) for c, keys in self.image_keys.items()},
            patch_source=self.patch_source,
            number={name: float(value) for name, value in self.numbers.items()},
            weight=as_weights(self.weights),
        )

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> LocalCoreset:
        parts = unpack(arrays, ("bank", "image_keys", "patch_source", "number", "weight"), "a local coreset file")
        return cls(
            banks={c: np.asarray(b, dtype=np.float32) for c, b in parts["bank"].items()},
            image_keys={c: [str(k) for k in keys] for c, keys in parts["image_keys"].items()},
            patch_source={c: np.asarray(s, dtype=np.int64) for c, s in parts["patch_source"].items()},
            numbers={name: float(v) for name, v in parts["number"].items()},
            weights=as_weights(parts["weight"]),
        )


def extract_features(
    samples: Sequence[Sample],
    infos: Mapping[str, CategoryInfo],
    embedder: PatchEmbedder,
    scratch_dir: str | Path,
    settings: ClientSettings,
) -> tuple[ExtractedFeatures, list[dict[str, Any]]]:
    """Stream the client's own training images through the backbone into feature files.

    Each image is seen as the site's camera delivers it (``settings.heterogeneity``), and its
    sharpness and noise are measured for the client's quality report. Returns the features
    (with those numbers) and the manifest of degradations applied to each image.
    """
    scratch = Path(scratch_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    degrade = ImageDegrader(settings.client_id, settings.heterogeneity, settings.seed)
    quality = QualityMeter()

    def as_seen_at_the_site(sample: Sample, image: np.ndarray) -> np.ndarray:
        image = degrade(sample, image)
        quality.add(sample.category, image)
        return image

    features = extract_patch_features(
        samples,
        dict(infos),
        embedder,
        tempfile.mkdtemp(prefix=f"client_{settings.client_id}_", dir=scratch),
        batch_size=settings.batch_size,
        projection_dim=settings.projection_dim,
        seed=settings.seed,
        num_workers=settings.num_workers,
        description=f"client {settings.client_id}",
        transform=as_seen_at_the_site,
    )
    features.numbers.update(quality.numbers())
    return features, degrade.manifest


def extract_tuned_features(
    samples: Sequence[Sample],
    infos: Mapping[str, CategoryInfo],
    backbone: Mapping[str, Any],
    extraction: Mapping[str, Any],
    tuned: Mapping[str, Any] | None,
    scratch_dir: str | Path,
    settings: ClientSettings,
) -> tuple[ExtractedFeatures, list[dict[str, Any]]]:
    """:func:`extract_features`, each category with its ``tuned`` setting (if it has one).

    Without ``tuned`` entries: one network from the ``backbone`` / ``extraction`` blocks.
    Otherwise the categories are extracted in groups sharing one network, each at its setting's
    input size; the categories' feature files may then differ in dimension (one bank per
    category; every client extracts a category with the same setting, so the server merges
    like with like).
    """
    if not tuned:
        return extract_features(samples, infos, make_embedder(backbone, extraction), scratch_dir, settings)
    per_category = tuned_settings.category_settings({s.category for s in samples}, backbone, extraction, {}, tuned)
    merged: ExtractedFeatures | None = None
    applied_all: list[dict[str, Any]] = []
    for setting, categories in tuned_settings.groups(per_category):
        group_backbone, group_extraction, _ = tuned_settings.blocks_for(setting, backbone, extraction, {})
        group_infos = {c: tuned_settings.info_for(setting, infos[c]) for c in categories}
        features, applied = extract_features(
            [s for s in samples if s.category in group_infos],
            group_infos,
            make_embedder(group_backbone, group_extraction),
            scratch_dir,
            settings,
        )
        applied_all.extend(applied)
        if merged is None:
            merged = features
            continue
        merged.files.update(features.files)
        merged.image_keys.update(features.image_keys)
        merged.grid.update(features.grid)
        merged.skipped.extend(features.skipped)
        merged.numbers.update(features.numbers)
    return merged, applied_all


def patch_positions(rows: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(image index, y, x) of feature-file rows, images stored one after another in row-major grids."""
    height, width = grid
    rows = np.asarray(rows, dtype=np.int64)
    return np.stack([rows // (height * width), (rows // width) % height, rows % width], axis=1)


def local_coreset_sizes(
    n_rows: Mapping[str, int], n_images: Mapping[str, int], settings: ClientSettings
) -> dict[str, int]:
    """Rows of the local coreset per category.

    Default: ``ratio`` × the category's patch vectors (at most ``max_size``). With
    ``coreset.total_size`` or a ``fairness.mode`` (``group_by: category``), one budget over all
    the client's categories (``total_size``, else the rows the default would keep in all) is
    split among them by :func:`~fedpatchcore.core.federation.fairness.group_quotas` (sizes: the
    client's images per category; candidates: its patch vectors, at most ``max_size``); every
    category keeps at least ``coreset.min_rows`` rows (all it has, if fewer).
    """
    default = {c: coreset_size(n, settings.coreset_ratio, settings.coreset_max_size) for c, n in n_rows.items()}
    if not settings.fairness.shapes_client_coreset(settings.coreset_total_size):
        return default
    budget = settings.coreset_total_size if settings.coreset_total_size is not None else sum(default.values())
    cap = settings.coreset_max_size
    candidates = {c: int(n if cap is None else min(n, cap)) for c, n in n_rows.items()}
    fairness, floor = settings.fairness, settings.coreset_min_rows
    if budget < sum(min(floor, n) for n in candidates.values()):
        raise ValueError(
            f"a budget of {budget} rows (coreset.total_size, or ratio over all categories) cannot give each of "
            f"client {settings.client_id}'s {len(candidates)} categories coreset.min_rows={floor} rows"
        )
    return group_quotas(
        {c: n_images.get(c, 0) for c in n_rows}, candidates, budget, fairness.mode, fairness.min_share, minimum=floor
    )


def select_local_coreset(features: ExtractedFeatures, settings: ClientSettings) -> LocalCoreset:
    """Greedy k-center coreset of each category's patch vectors, gathered at full dimension
    (sizes from :func:`local_coreset_sizes`).

    With ``settings.privacy.enabled`` the coreset is chosen among the category's *released*
    rows (:func:`release_local_rows`): k-center never sees a raw vector, and the sizes (ratio,
    ``coreset.total_size``, fairness quotas) apply to the released rows. Self-measured image
    quality is then not reported either (it is computed from the raw images and not covered by
    the guarantee).
    """
    if settings.privacy.mechanism == "summary":
        raise ValueError(
            "privacy.mechanism: summary is built by the federated variants' summary rounds, not by a client's "
            "coreset; leave the centralized baseline out (comparison.centralized: false)"
        )
    if settings.privacy.enabled:
        if settings.denoise.enabled or any(d.enabled for d in settings.denoise_by_category.values()):
            raise ValueError("coreset.denoise needs raw patch vectors: set it to none with privacy.enabled")
        return _select_among_released(features, settings)
    device = resolve_device(settings.coreset_device, parameter="coreset.device")
    banks, sources = {}, {}
    sizes = local_coreset_sizes(
        {c: f.n_rows for c, f in features.files.items()},
        {c: len(keys) for c, keys in features.image_keys.items()},
        settings,
    )
    weights = {}
    for category, feature_file in features.files.items():
        k = sizes[category]
        denoise = settings.denoise_for(category)
        kept = None
        if denoise.enabled:  # drop the most outlying patches first; k-center chooses among the rest
            result = denoise_feature_file(feature_file, len(features.image_keys[category]), features.grid[category], denoise)
            kept, k = result.kept, min(k, len(result.kept))
            logger.info(
                "client %s: %s denoising (%s) dropped %d of %d patch vectors",
                settings.client_id, category, denoise.method, feature_file.n_rows - len(kept), feature_file.n_rows,
            )
            suspects = result.suspect_images(denoise.image_gate)
            if suspects:  # the "good" images a user should look at: likely defective parts
                keys = features.image_keys[category]
                logger.warning(
                    "client %s: %s: %d of %d training images stand out as a whole (outlyingness >= %s), check "
                    "them for defects: %s",
                    settings.client_id, category, len(suspects), len(keys), denoise.image_gate,
                    ", ".join(f"{keys[i]} ({z:.1f})" for i, z in suspects),
                )
        chosen = select_coreset_streaming(
            feature_file, k, seed=settings.seed, num_starts=settings.coreset_num_starts, device=device, candidates=kept
        )
        if kept is not None:
            weights[category] = result.weights[np.searchsorted(kept, chosen)]
        banks[category] = feature_file.gather(chosen)
        sources[category] = patch_positions(chosen, features.grid[category])
        logger.info(
            "client %s: %s coreset %d of %d patch vectors (ratio %.3g)",
            settings.client_id,
            category,
            k,
            feature_file.n_rows,
            settings.coreset_ratio,
        )
    numbers = {**features.numbers, "images.skipped": float(len(features.skipped))}
    return LocalCoreset(banks, {c: list(k) for c, k in features.image_keys.items()}, sources, numbers, weights)


def release_local_rows(features: ExtractedFeatures, settings: ClientSettings) -> dict[str, ReleasedRows]:
    """The client's differentially private release: per category, m clipped and noised vectors per image."""
    return {
        category: release_category(
            feature_file,
            features.image_keys[category],
            features.grid[category],
            settings.privacy,
            settings.client_id,
            category,
        )
        for category, feature_file in features.files.items()
    }


def _select_among_released(features: ExtractedFeatures, settings: ClientSettings) -> LocalCoreset:
    device = resolve_device(settings.coreset_device, parameter="coreset.device")
    # Charged before anything is released: refused past privacy.max_epsilon, composed with
    # every earlier release of the same images (other variants, rounds, runs).
    spent = charge_release(settings.privacy, settings.client_id, features.image_keys, f"client {settings.client_id}")
    banks, sources = {}, {}
    release = release_local_rows(features, settings)
    # The same budget rules as without privacy (ratio, total_size, fairness), on the released rows.
    sizes = local_coreset_sizes(
        {c: len(released.rows) for c, released in release.items()},
        {c: len(keys) for c, keys in features.image_keys.items()},
        settings,
    )
    for category, released in release.items():
        k = sizes[category]
        chosen = greedy_kcenter(
            released.rows,
            k,
            projection_dim=settings.projection_dim,
            seed=settings.seed,
            num_starts=settings.coreset_num_starts,
            device=device,
        )
        banks[category] = released.rows[chosen]
        sources[category] = released.source[chosen]
        logger.info(
            "client %s: %s coreset %d of %d released rows (DP, σ=%.3g per coordinate)",
            settings.client_id,
            category,
            k,
            len(released.rows),
            settings.privacy.sigma,
        )
    worst = most_exposed(spent)
    budget = settings.privacy.budget(None, worst)
    numbers = {
        "images.skipped": float(len(features.skipped)),
        "privacy.epsilon": float(budget["epsilon"]),
        "privacy.delta": float(budget["delta"]),
        "privacy.sigma": float(budget["sigma"]),
    }
    return LocalCoreset(banks, {c: list(k) for c, k in features.image_keys.items()}, sources, numbers, spent=worst)


def privacy_budget(local: LocalCoreset, settings: ClientSettings) -> dict[str, Any]:
    """JSON-ready: what the client's release spent (``privacy.enabled`` false: no guarantee).

    Spent once, whatever the number of rounds: later rounds re-select among released rows.
    ``epsilon`` is what the site's ledger holds for its most exposed image after this release.
    """
    if not settings.privacy.enabled:
        return settings.privacy.budget(None)
    return settings.privacy.budget(local.n_images, local.spent)


def build_upload(
    local: LocalCoreset, settings: ClientSettings, broadcast: CategoryBanks | None = None
) -> ClientUpload:
    """The client's upload for a round.

    Round 1 (no ``broadcast``): the whole local coreset. Round r > 1: only rows the broadcast
    global bank does not cover (farther than its ``coverage_quantile`` nearest-neighbour
    distance from every global row), so rows the server already has are not sent again.
    """
    banks, row_ids, weights, folds = {}, {}, {}, {}
    for category, bank in local.banks.items():
        keep = np.arange(len(bank), dtype=np.int64)
        global_rows = None if broadcast is None else broadcast.banks.get(category)
        if global_rows is not None and len(global_rows) >= 2:
            radius = covering_radius_estimate(global_rows, settings.coverage_quantile)
            keep = np.flatnonzero(uncovered_rows(bank, global_rows, radius))
        banks[category] = bank[keep]
        row_ids[category] = keep
        if category in local.weights:
            weights[category] = local.weights[category][keep]
        if settings.upload_folds:
            halves = image_folds(len(local.image_keys[category]), settings.seed, settings.client_id, category)
            folds[category] = halves[local.patch_source[category][keep, 0]]
    return ClientUpload(settings.client_id, banks, local.n_images, row_ids, dict(local.numbers), weights, folds)


def image_folds(n_images: int, seed: int, client_id: str, category: str) -> np.ndarray:
    """(n_images,) int8: a seeded half of a client's images of a category is fold 0, the rest fold 1."""
    folds = np.ones(n_images, dtype=np.int8)
    folds[derive_rng(seed, "folds", str(client_id), category).permutation(n_images)[: (n_images + 1) // 2]] = 0
    return folds


def as_bank(local: LocalCoreset, client_id: str) -> CategoryBanks:
    """A client's coreset used directly as a memory bank (the centralized baseline's single client)."""
    return CategoryBanks(
        banks=dict(local.banks),
        n_images=local.n_images,
        origin={c: np.full(len(b), str(client_id)) for c, b in local.banks.items()},  # dtype=str would be <U1
        origin_row={c: np.arange(len(b), dtype=np.int64) for c, b in local.banks.items()},
        weights=dict(local.weights),
    )
