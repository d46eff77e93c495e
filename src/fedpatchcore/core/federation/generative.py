"""Federated training of the DP-CVAE (``privacy.mechanism: dp_cvae``): what a client and the server do
in each round, whatever carries the messages.

    client: patch features ──client_data──► m public positions per image (+ a held-out share)
            round r: global weights ──train_local (DP-SGD)──► ModelUpdate (weights, image counts,
                     (R, C) reports when the averaging is trust-aware)
    server: round r: updates ──average_round──► global weights (FedAvg, or trust-aware) + report
            after the last round: global decoder ──synthetic_bank──► memory bank per category

The Kedro lanes and the Flower apps are thin calls of these functions; the model itself, its
privacy accounting and the sampling live in :mod:`fedpatchcore.core.privacy.generative`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpatchcore.core.banks import pack, unpack
from fedpatchcore.core.federation.heterogeneity import parse_client
from fedpatchcore.core.federation.trust import TrustSettings, model_trust_scores
from fedpatchcore.core.privacy import generative as gen
from fedpatchcore.core.privacy.ledger import Mechanism, image_set_id
from fedpatchcore.core.privacy.model_averaging import fedavg_weights, weighted_average
from fedpatchcore.core.privacy.release import PrivacySettings, choose_positions

logger = logging.getLogger(__name__)

#: The parameter blocks the server of a DP-CVAE federation reads: the averaging rule and the
#: sampling (``privacy.dp_cvae``), trust's α, β, γ (``trust``), k-center's projection (``coreset``).
SERVER_BLOCKS = ("seed", "privacy", "trust", "coreset")


def is_generative(parameters: Mapping[str, Any]) -> bool:
    """Whether the run's clients release a DP-CVAE (``privacy.mechanism: dp_cvae``) instead of rows."""
    return (parameters.get("privacy") or {}).get("mechanism", "rows") == "dp_cvae"


def cvae_settings(parameters: Mapping[str, Any]) -> gen.CVAESettings:
    """The run's ``privacy.dp_cvae`` settings (the rounds, the averaging, the sampling)."""
    return gen.CVAESettings.from_parameters((parameters.get("privacy") or {}).get("dp_cvae"))


@dataclass(frozen=True)
class GenerativeSettings:
    """What a site needs to train its DP-CVAE (from the run's ``privacy`` and ``heterogeneity``
    blocks and seed)."""

    client_id: str
    cvae: gen.CVAESettings
    privacy: PrivacySettings  # enabled: DP-SGD within privacy.epsilon; disabled: plain training
    seed: int
    drift: float = 0.0  # heterogeneity.<client>.encoder_drift

    @classmethod
    def from_parameters(
        cls,
        client_id: str,
        *,
        privacy: Mapping[str, Any] | None,
        seed: int,
        heterogeneity: Mapping[str, Any] | None = None,
    ) -> GenerativeSettings:
        privacy = dict(privacy or {})
        return cls(
            client_id=str(client_id),
            cvae=gen.CVAESettings.from_parameters(privacy.get("dp_cvae")),
            privacy=PrivacySettings.from_parameters(privacy, seed),
            seed=int(seed),
            drift=parse_client(str(client_id), (heterogeneity or {}).get(str(client_id))).encoder_drift,
        )

    @classmethod
    def from_run(cls, parameters: Mapping[str, Any], client_id: str) -> GenerativeSettings:
        """Client ``client_id``'s settings from the run's client blocks (``privacy``, ``seed``, ``heterogeneity``)."""
        return cls.from_parameters(
            client_id,
            privacy=parameters.get("privacy"),
            seed=int(parameters["seed"]),
            heterogeneity=parameters.get("heterogeneity"),
        )

    def plan(self, n_train: int) -> gen.TrainingPlan:
        """The client's DP-SGD schedule and budget over all rounds (not private when privacy is disabled)."""
        epsilon = self.privacy.epsilon if self.privacy.enabled else None
        return gen.plan_training(
            n_train,
            self.cvae,
            epsilon=epsilon,
            delta=self.privacy.delta,
            accountant=self.privacy.accountant,
        )


@dataclass
class ModelUpdate:
    """What one client sends in a round: its weights after local training and what stands behind them."""

    client_id: str
    weights: dict[str, np.ndarray]
    n_images: dict[str, int]  # training images per category (public, as for every release)
    numbers: dict[str, float] = field(default_factory=dict)  # (R, C) reports per category

    @property
    def n_examples(self) -> int:
        return int(sum(self.n_images.values()))

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(w).nbytes for w in self.weights.values()))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return pack(
            weight=self.weights,
            n_images={c: int(n) for c, n in self.n_images.items()},
            number={name: float(v) for name, v in self.numbers.items()},
        )

    @classmethod
    def from_arrays(cls, client_id: str, arrays: Mapping[str, np.ndarray]) -> ModelUpdate:
        parts = unpack(arrays, ("weight", "n_images", "number"), f"the model update of client '{client_id}'")
        return cls(
            str(client_id),
            {k: np.asarray(v, np.float32) for k, v in parts["weight"].items()},
            {c: int(n) for c, n in parts["n_images"].items()},
            {k: float(v) for k, v in parts["number"].items()},
        )


def model_shape(dim: int, categories: Sequence[str], settings: gen.CVAESettings) -> gen.ModelShape:
    """The shape every party derives from public values: the feature dimension and the run's categories."""
    return gen.ModelShape.of(dim, categories, settings)


def client_data(
    features: Any, shape: gen.ModelShape, settings: gen.CVAESettings, seed: int, client_id: str
) -> gen.GenerativeData:
    """The training set of one client from its extracted features (an ``ExtractedFeatures``).

    Per image ``patches_per_image`` positions from public values only (the rows release's rule,
    :func:`~fedpatchcore.core.privacy.release.choose_positions`), gathered from the feature file and divided by ``feature_scale``; a seeded
    ``holdout_fraction`` of the images (per category) is kept for the reports.
    """
    xs, conds, cats, held = [], [], [], []
    for category in sorted(features.files):
        feature_file, keys, grid = (
            features.files[category],
            features.image_keys[category],
            features.grid[category],
        )
        per_image = int(grid[0]) * int(grid[1])
        positions = np.stack(
            [choose_positions(grid, settings.patches_per_image, seed, client_id, key) for key in keys]
        )  # (n, m') with m' = min(m, positions per image)
        rows = (np.arange(len(keys))[:, None] * per_image + positions).ravel()
        vectors = feature_file.gather(rows).reshape(len(keys), positions.shape[1], -1)
        xs.append(vectors / np.float32(settings.feature_scale))
        cells = (
            gen.coarse_cells(positions, grid, settings.position_grid)
            if shape.n_cells
            else np.zeros_like(positions)
        )
        conds.append(gen.conditions_for(shape, category, cells))
        cats.append(np.full(len(keys), shape.category_index(category), dtype=np.int64))
        held.append(gen.is_held_out(keys, settings.holdout_fraction, seed, f"{client_id}/{category}"))
    return gen.GenerativeData(
        np.concatenate(xs).astype(np.float32),
        np.concatenate(conds),
        np.concatenate(cats),
        np.concatenate(held),
    )


def client_round(
    data: gen.GenerativeData,
    shape: gen.ModelShape,
    global_weights: Mapping[str, np.ndarray] | None,
    settings: GenerativeSettings,
    round_number: int,
) -> ModelUpdate:
    """One round at a site: local training from the broadcast weights (round 1: the public initial model)."""
    weights = gen.initial_weights(shape, settings.seed) if global_weights is None else global_weights
    plan = settings.plan(int((~data.holdout).sum()))
    result = gen.train_local(
        shape,
        weights,
        data,
        settings.cvae,
        plan,
        seed=settings.seed,
        client_id=settings.client_id,
        round_number=round_number,
        noise_seed=settings.privacy.noise_seed,
        drift=settings.drift,
    )
    logger.info(
        "client %s: DP-CVAE round %d, loss per epoch %s%s",
        settings.client_id,
        round_number,
        ", ".join(f"{loss:.3f}" for loss in result.losses),
        f" (noise multiplier {plan.noise_multiplier:.3g})" if plan.private else " (not private)",
    )
    return ModelUpdate(settings.client_id, result.arrays, data.train_counts(shape.categories), result.numbers)


def averaging_weights(
    updates: Sequence[ModelUpdate], averaging: str, trust: TrustSettings, round_number: int
) -> tuple[dict[str, float], dict[str, dict]]:
    """Each client's weight in the average, and its trust scores (empty for FedAvg).

    FedAvg: training images. Trust-aware: training images × T (0 under ``trust.min_trust``); if
    trust excludes every client, the round falls back to FedAvg (and says so).
    """
    examples = fedavg_weights({u.client_id: u.n_examples for u in updates})
    if averaging not in gen.AVERAGING:
        raise ValueError(f"privacy.dp_cvae.averaging must be one of {list(gen.AVERAGING)}, got {averaging!r}")
    if averaging != "trust":
        return examples, {}
    scores = model_trust_scores(
        {u.client_id: u.numbers for u in updates}, {u.client_id: u.n_images for u in updates}, trust
    )
    weights = {cid: w * scores[cid]["weight"] for cid, w in examples.items()}
    if not any(weights.values()):
        logger.warning(
            "Round %d: trust excludes every client; averaging them all by images instead", round_number
        )
        weights = dict(examples)
    return weights, scores


def round_report(
    updates: Sequence[ModelUpdate],
    weights: Mapping[str, float],
    scores: Mapping[str, dict],
    averaging: str,
    round_number: int,
) -> dict[str, Any]:
    """JSON-ready: what each client sent, its share of the average and its trust."""
    total = sum(weights.values())
    report = {
        "round": int(round_number),
        "averaging": averaging,
        "uploaded": {
            u.client_id: {"n_images": dict(u.n_images), "numbers": dict(u.numbers), "bytes": u.nbytes}
            for u in updates
        },
        "uploaded_bytes": int(sum(u.nbytes for u in updates)),
        # Round r > 1 started from the global model every client received (the initial model is public).
        "broadcast_bytes": int(updates[0].nbytes * len(updates)) if round_number > 1 else 0,
        "rejected": {},
        "client_weights": {cid: float(w / total) for cid, w in weights.items()},
        "trust": {cid: dict(v) for cid, v in scores.items()},
    }
    logger.info(
        "Round %d (%s): client weights %s",
        round_number,
        averaging,
        ", ".join(f"{cid} {w:.2f}" for cid, w in report["client_weights"].items()),
    )
    return report


def average_round(
    updates: Sequence[ModelUpdate],
    cvae: gen.CVAESettings,
    trust: TrustSettings,
    round_number: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The server's step: FedAvg (weights ∝ training images) or trust-aware (× T, clients under
    ``trust.min_trust`` left out). Returns the global weights and a JSON-ready round report."""
    if not updates:
        raise ValueError(f"round {round_number}: no model update to average")
    weights, scores = averaging_weights(updates, cvae.averaging, trust, round_number)
    averaged = weighted_average([u.weights for u in updates], [weights[u.client_id] for u in updates])
    return averaged, round_report(updates, weights, scores, cvae.averaging, round_number)


def features_dim(features: Any) -> int:
    """The patch vectors' dimension of an ``ExtractedFeatures`` (every category's file has the same)."""
    dims = {int(f.dim) for f in features.files.values()}
    if len(dims) != 1:
        raise ValueError(f"a client's feature files must share one dimension, got {sorted(dims)}")
    return dims.pop()


def global_bank(
    weights: Mapping[str, np.ndarray],
    categories: Sequence[str],
    last_round: Mapping[str, Any],
    parameters: Mapping[str, Any],
) -> tuple[Any, dict[str, np.ndarray]]:
    """After the last round: the synthetic memory bank of the global decoder, and the full samples.

    ``last_round``: the last round's report (its clients' public training-image counts become
    the bank's per-category image counts); ``parameters``: the run's :data:`SERVER_BLOCKS`.
    """
    cvae = cvae_settings(parameters)
    shape = gen.ModelShape.from_weights(weights, categories, cvae)
    n_images: dict[str, int] = {}
    for sent in last_round["uploaded"].values():
        for category, count in sent["n_images"].items():
            n_images[category] = n_images.get(category, 0) + int(count)
    return gen.synthetic_bank(
        shape,
        weights,
        n_images,
        cvae,
        seed=int(parameters["seed"]),
        projection_dim=(parameters.get("coreset") or {}).get("projection_dim"),
    )


def held_out_embeddings(
    datas: Sequence[gen.GenerativeData], categories: Sequence[str], settings: gen.CVAESettings
) -> dict[str, np.ndarray]:
    """The clients' held-out real patch vectors per category, in the backbone's units (fidelity's reference).

    An experimenter's measure, not a message of the protocol: no client sends these.
    """
    ordered = sorted(categories)
    rows: dict[str, list[np.ndarray]] = {}
    for data in datas:
        for index in np.unique(data.category[data.holdout]):
            chosen = data.holdout & (data.category == index)
            vectors = data.x[chosen].reshape(-1, data.x.shape[-1]) * np.float32(settings.feature_scale)
            rows.setdefault(ordered[int(index)], []).append(vectors)
    return {category: np.concatenate(parts) for category, parts in rows.items()}


def charge_training(
    settings: GenerativeSettings, plan: gen.TrainingPlan, image_keys: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """Record the DP-CVAE's training in the site's ledger before any round runs; its budget.

    Every image of a category is charged with every mechanism of the plan (DP-SGD steps of all
    rounds and, for trust-aware averaging, the reports): conservative, since a held-out image
    only enters the reports and a training image only the DP-SGD steps. Refused
    (:class:`~fedpatchcore.core.privacy.ledger.BudgetExceeded`) past ``privacy.max_epsilon``.
    The budget's ``epsilon`` is the plan's; the published one is what the ledger composes.
    """
    budget = {**plan.budget(), "private": plan.private and settings.privacy.private}
    if plan.ledger is None:
        return budget
    privacy, client_id = settings.privacy, settings.client_id
    mechanisms = [Mechanism(*entry) for entry in plan.ledger.entries]
    ledger = privacy.site_ledger(client_id)
    for category, keys in image_keys.items():
        ledger.charge(
            keys,
            mechanisms,
            label=f"client {client_id} {category}: dp_cvae, image ε={privacy.epsilon:g}",
            private=privacy.private,
            release_id=privacy.release_id(client_id, category, image_set_id(keys), "dp_cvae"),
        )
    return budget
