"""Generative release: a differentially private conditional VAE of a client's patch embeddings.

Instead of rows or summaries a client may release a small generative *model* of its normal
patch embeddings (Di Salvo et al.: DP conditional VAEs on foundation-model embeddings); the
server averages the clients' models over rounds and samples a synthetic memory bank from the
global decoder (:func:`synthetic_bank`), which k-center thins like any other bank.

**The model** (:class:`ConditionalVAE`): an MLP encoder q(z | x, c) and decoder p(x | z, c) on
patch vectors x (the backbone's, divided by the public ``feature_scale``), conditioned on c =
one-hot category (the run's public category list) and, with ``position_grid`` g > 0, the
one-hot coarse cell (g × g over the patch grid) the patch came from. The loss of one image is
the mean over its patches of ½‖x − x̂‖² + ``kl_weight`` · KL(q(z|x,c) ‖ N(μ₀, I)), plus the
global consistency regulariser (GCR): ``gcr_weight`` × MMD² between the image's latent codes
and N(μ₀, I) (RBF kernel, closed form: :func:`mmd2_to_gaussian`). μ₀ = 0 unless the client
has ``heterogeneity.<id>.encoder_drift`` (a biased prior: the drift experiments).

**Privacy unit: the image, by per-image gradient clipping.** A client's training set holds,
per image, m = ``patches_per_image`` patch positions chosen from public values only (run
seed, client id, image key: :func:`~fedpatchcore.core.privacy.release.choose_positions`).
One Opacus example is one image: a tensor (m, d), so Opacus' per-sample gradient is the
gradient of that image's whole loss (all its patches, its GCR term) and is clipped to
``max_grad_norm`` as one; nothing in the loss couples two images (the GCR is per image, not
per batch). Batches are Poisson-sampled images (rate q = 1 / ceil(n / ``batch_images``), as
Opacus sets it), Gaussian noise of ``noise multiplier × max_grad_norm`` on the summed clipped
gradients; the accountant (``privacy.accountant``) composes every step of every round. The
neighbouring relation is replace-one image within a category (per-category image counts are
public, as for every other release).

**What else leaves the site.** Trust-aware averaging needs two numbers per category and round:
R, the local model's reconstruction error on the client's held-out images (each image's
clipped to [0, ``report_clip``]), and C, the MMD² of all their latent codes to N(0, I) (at most
2 for an RBF kernel). Replacing one of n held-out images moves the scaled pair by at most √5/n
(:func:`client_reports`); both are noised with σ = z × √5 / n, a Gaussian mechanism per round
whose z the accountant sets so that all rounds of reports alone spend ``report_epsilon_share``
× ``privacy.epsilon``. FedAvg needs no report and spends nothing on it. The DP-SGD noise
multiplier is then the smallest one that keeps everything the client releases within
``privacy.epsilon`` (:func:`plan_training`).

**Randomness.** Initial weights, positions, the hold-out split and the VAE's own sampling
noise derive from the run's seed (public, and may be). Batch sampling and the DP noise come
from OS entropy (``noise_seed: null``); a fixed noise seed makes runs reproducible and voids
the guarantee against anyone who knows it.

Everything here takes arrays and plain values; nothing imports Kedro or Flower.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpatchcore.core.banks import CategoryBanks, pack, unpack
from fedpatchcore.core.common.runtime import set_torch_threads
from fedpatchcore.core.common.seeding import derive_rng, derive_seed
from fedpatchcore.core.coreset.kcenter import greedy_kcenter
from fedpatchcore.core.privacy.accounting import PrivacyLedger, noise_multiplier_for

logger = logging.getLogger(__name__)

AVERAGING = ("fedavg", "trust")
# MMD² of a kernel bounded by 1 is at most 2: the bound of one image's consistency report.
MMD2_BOUND = 2.0
# The client reports per category; these prefixes name the numbers of a model update.
RECONSTRUCTION = "report.reconstruction"
CONSISTENCY = "report.consistency"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CVAESettings:
    """The ``privacy.dp_cvae`` block (conf/base/parameters_privacy.yml documents every key)."""

    latent_dim: int = 16
    hidden_dim: int = 64
    patches_per_image: int = 16
    position_grid: int = 4
    feature_scale: float = 2.5
    kl_weight: float = 1.0
    gcr_weight: float = 1.0
    gcr_bandwidth: float | None = None
    rounds: int = 5
    local_epochs: int = 5
    batch_images: int = 256
    learning_rate: float = 0.01
    max_grad_norm: float = 1.0
    holdout_fraction: float = 0.1
    report_epsilon_share: float = 0.1
    report_clip: float = 4.0
    averaging: str = "fedavg"
    samples_per_category: int = 4000
    bank_size: int = 400
    fidelity_projections: int = 64
    fidelity_max_rows: int = 1000
    num_threads: int = 1

    def __post_init__(self) -> None:
        where = "privacy.dp_cvae"
        positive_ints = (
            "latent_dim",
            "hidden_dim",
            "patches_per_image",
            "rounds",
            "local_epochs",
            "batch_images",
        )
        counts = (
            "samples_per_category",
            "bank_size",
            "fidelity_projections",
            "fidelity_max_rows",
            "num_threads",
        )
        for name in (*positive_ints, *counts):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "feature_scale",
            "learning_rate",
            "max_grad_norm",
            "report_clip",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        for name in ("kl_weight", "gcr_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{where}.{name} must be >= 0, got {getattr(self, name)}")
        if self.position_grid < 0:
            raise ValueError(
                f"{where}.position_grid must be >= 0 (0: no position condition), got {self.position_grid}"
            )
        if self.gcr_bandwidth is not None and not self.gcr_bandwidth > 0:
            raise ValueError(f"{where}.gcr_bandwidth must be positive or null, got {self.gcr_bandwidth}")
        if not 0.0 < self.report_epsilon_share < 1.0:
            raise ValueError(
                f"{where}.report_epsilon_share must lie in (0, 1), got {self.report_epsilon_share}"
            )
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"{where}.holdout_fraction must lie in [0, 1), got {self.holdout_fraction}")
        if self.averaging not in AVERAGING:
            raise ValueError(f"{where}.averaging must be one of {list(AVERAGING)}, got {self.averaging!r}")
        if self.bank_size > self.samples_per_category:
            raise ValueError(
                f"{where}.bank_size ({self.bank_size}) cannot exceed samples_per_category ({self.samples_per_category})"
            )

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_parameters(cls, block: Mapping[str, Any] | None) -> CVAESettings:
        """The block, checked: unknown keys and values of the wrong type are errors naming the key."""
        block = dict(block or {})
        unknown = sorted(set(block) - set(cls.keys()))
        if unknown:
            raise ValueError(f"privacy.dp_cvae: unknown keys {unknown}; expected some of {list(cls.keys())}")
        defaults = cls()
        for name, value in block.items():
            default = getattr(defaults, name)
            if name == "gcr_bandwidth":
                expected: tuple[type, ...] = (int, float, type(None))
            elif isinstance(default, float):
                expected = (int, float)
            else:
                expected = (type(default),)
            if isinstance(value, bool) or not isinstance(value, expected):
                raise ValueError(
                    f"privacy.dp_cvae.{name} must be {' or '.join(t.__name__ for t in expected)}, got {value!r}"
                )
        return cls(**block)

    @property
    def bandwidth2(self) -> float:
        """Squared RBF length scale of the GCR (null: latent_dim, the median heuristic for N(0, I))."""
        return float(self.gcr_bandwidth) ** 2 if self.gcr_bandwidth is not None else float(self.latent_dim)

    @property
    def n_cells(self) -> int:
        return self.position_grid**2 if self.position_grid else 0

    @property
    def reports(self) -> bool:
        """Whether clients report (R, C) each round (trust-aware averaging needs them; FedAvg does not)."""
        return self.averaging == "trust"


# --------------------------------------------------------------------------- the model


class ConditionalVAE(nn.Module):
    """MLP conditional VAE: encoder (x, c) -> (μ, log σ²), decoder (z, c) -> x̂; Opacus-compatible layers only."""

    def __init__(self, dim: int, n_conditions: int, latent_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.dim, self.n_conditions, self.latent_dim = int(dim), int(n_conditions), int(latent_dim)
        self.encoder = nn.Sequential(
            nn.Linear(dim + n_conditions, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + n_conditions, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, dim),
        )

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(torch.cat([x, c], dim=-1)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, c], dim=-1))

    def forward(self, x: torch.Tensor, c: torch.Tensor, eps: torch.Tensor):
        """``x`` (..., d), ``c`` (..., n_conditions), ``eps`` (..., latent): x̂, μ, log σ², z."""
        mu, logvar = self.encode(x, c)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z, c), mu, logvar, z


@dataclass(frozen=True)
class ModelShape:
    """What fixes the model's parameter shapes: feature dimension, public category list, settings."""

    dim: int
    categories: tuple[str, ...]
    n_cells: int
    latent_dim: int
    hidden_dim: int

    @classmethod
    def of(cls, dim: int, categories: Sequence[str], settings: CVAESettings) -> ModelShape:
        return cls(
            int(dim), tuple(sorted(categories)), settings.n_cells, settings.latent_dim, settings.hidden_dim
        )

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, np.ndarray], categories: Sequence[str], settings: CVAESettings
    ) -> ModelShape:
        """The shape of a received model (the server knows the categories and settings, not the feature dimension)."""
        try:
            dim = int(np.shape(weights["decoder.4.weight"])[0])
        except KeyError as exc:
            raise ValueError("the model weights hold no 'decoder.4.weight': not a DP-CVAE") from exc
        shape = cls.of(dim, categories, settings)
        expected = np.shape(weights.get("encoder.0.weight", ()))
        if expected != (shape.hidden_dim, dim + shape.n_conditions):
            raise ValueError(
                f"the model's first layer has shape {expected}, expected {(shape.hidden_dim, dim + shape.n_conditions)} "
                f"for categories {list(shape.categories)} and privacy.dp_cvae settings"
            )
        return shape

    @property
    def n_conditions(self) -> int:
        return len(self.categories) + self.n_cells

    def build(self) -> ConditionalVAE:
        return ConditionalVAE(self.dim, self.n_conditions, self.latent_dim, self.hidden_dim)

    def category_index(self, category: str) -> int:
        if category not in self.categories:
            raise KeyError(
                f"category '{category}' is not among the model's categories {list(self.categories)}"
            )
        return self.categories.index(category)


def initial_weights(shape: ModelShape, seed: int) -> dict[str, np.ndarray]:
    """The round-1 model every party can rebuild from public values (shape and run seed)."""
    with torch.random.fork_rng(devices=[]):  # the global RNG is restored: no one else's draws move
        torch.manual_seed(derive_seed(seed, "dp_cvae_init"))
        model = shape.build()
    return model_arrays(model)


def model_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's weights as float32 arrays keyed by parameter name (what travels, what is averaged)."""
    module = getattr(model, "_module", model)  # an Opacus-wrapped model holds the original in _module
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in module.state_dict().items()
    }


def load_model(shape: ModelShape, arrays: Mapping[str, np.ndarray]) -> ConditionalVAE:
    """A model of ``shape`` holding ``arrays``; a missing, extra or misshapen entry is an error naming it."""
    model = shape.build()
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ValueError(f"model weights do not fit the DP-CVAE: missing {missing}, unexpected {extra}")
    for name, tensor in expected.items():
        if tuple(np.shape(arrays[name])) != tuple(tensor.shape):
            raise ValueError(
                f"model weight '{name}' has shape {np.shape(arrays[name])}, expected {tuple(tensor.shape)}"
            )
    model.load_state_dict(
        {name: torch.as_tensor(np.asarray(arrays[name], dtype=np.float32)) for name in expected}
    )
    return model


# --------------------------------------------------------------------------- GCR: MMD to a Gaussian


def mmd2_to_gaussian(z: torch.Tensor, mean: torch.Tensor, bandwidth2: float) -> torch.Tensor:
    """Biased MMD² between the codes of each set (``z``: (..., m, k)) and N(``mean``, I), in closed form.

    RBF kernel k(a, b) = exp(−‖a − b‖² / (2ℓ²)) with ℓ² = ``bandwidth2``; for y, y' ~ N(μ, I):
    E k(z, y) = (ℓ²/(ℓ²+1))^{k/2} exp(−‖z − μ‖² / (2(ℓ²+1))) and E k(y, y') = (ℓ²/(ℓ²+2))^{k/2}.
    Returns one value per set (shape ``z.shape[:-2]``), in [0, 2].
    """
    k = z.shape[-1]
    sq = ((z.unsqueeze(-2) - z.unsqueeze(-3)) ** 2).sum(-1)
    within = torch.exp(-sq / (2 * bandwidth2)).mean(dim=(-1, -2))
    cross = (bandwidth2 / (bandwidth2 + 1)) ** (k / 2) * torch.exp(
        -((z - mean) ** 2).sum(-1) / (2 * (bandwidth2 + 1))
    )
    prior = (bandwidth2 / (bandwidth2 + 2)) ** (k / 2)
    return within - 2 * cross.mean(-1) + prior


def image_losses(
    model: nn.Module,
    x: torch.Tensor,
    c: torch.Tensor,
    eps: torch.Tensor,
    prior_mean: torch.Tensor,
    settings: CVAESettings,
) -> torch.Tensor:
    """Loss of every image of a batch (``x``: (B, m, d)): nothing in it couples two images."""
    recon, mu, logvar, z = model(x, c, eps)
    reconstruction = 0.5 * ((recon - x) ** 2).sum(-1)
    kl = 0.5 * ((mu - prior_mean) ** 2 + torch.exp(logvar) - logvar - 1.0).sum(-1)
    per_image = (reconstruction + settings.kl_weight * kl).mean(-1)
    if settings.gcr_weight:
        per_image = per_image + settings.gcr_weight * mmd2_to_gaussian(z, prior_mean, settings.bandwidth2)
    return per_image


# --------------------------------------------------------------------------- a client's data


@dataclass
class GenerativeData:
    """A client's training set for the DP-CVAE: m public positions per image, scaled, with conditions."""

    x: np.ndarray  # (n_images, m, d) float32, divided by feature_scale
    conditions: np.ndarray  # (n_images, m, n_conditions) float32 one-hot (category, coarse cell)
    category: np.ndarray  # (n_images,) int64 index into the model's categories
    holdout: np.ndarray  # (n_images,) bool: held out of training, used for the (R, C) reports

    @property
    def n_images(self) -> int:
        return len(self.x)

    def train_counts(self, categories: Sequence[str]) -> dict[str, int]:
        counts = np.bincount(self.category[~self.holdout], minlength=len(categories))
        return {c: int(n) for c, n in zip(categories, counts, strict=True) if n}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "x": self.x,
            "conditions": self.conditions,
            "category": self.category,
            "holdout": self.holdout,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> GenerativeData:
        return cls(
            np.asarray(arrays["x"], np.float32),
            np.asarray(arrays["conditions"], np.float32),
            np.asarray(arrays["category"], np.int64),
            np.asarray(arrays["holdout"], bool),
        )


def coarse_cells(positions: np.ndarray, grid: tuple[int, int], position_grid: int) -> np.ndarray:
    """The coarse cell (``position_grid`` × ``position_grid`` over the patch grid) of flat positions."""
    height, width = int(grid[0]), int(grid[1])
    y, x = np.asarray(positions) // width, np.asarray(positions) % width
    return (y * position_grid // height) * position_grid + (x * position_grid // width)


def conditions_for(shape: ModelShape, category: str, cells: np.ndarray) -> np.ndarray:
    """One-hot conditions (..., n_conditions) for patches of ``category`` at coarse ``cells``."""
    cells = np.asarray(cells, dtype=np.int64)
    out = np.zeros((*cells.shape, shape.n_conditions), dtype=np.float32)
    out[..., shape.category_index(category)] = 1.0
    if shape.n_cells:
        np.put_along_axis(out, (len(shape.categories) + cells)[..., None], 1.0, axis=-1)
    return out


def is_held_out(image_keys: Sequence[str], fraction: float, seed: int, client_id: str) -> np.ndarray:
    """A seeded share of a client's images, chosen from their keys only (public), at least one
    training image left."""
    held = np.zeros(len(image_keys), dtype=bool)
    count = min(int(round(fraction * len(image_keys))), len(image_keys) - 1)
    if count > 0:
        order = derive_rng(seed, "dp_cvae_holdout", str(client_id)).permutation(len(image_keys))
        held[order[:count]] = True
    return held


# --------------------------------------------------------------------------- the DP plan


@dataclass(frozen=True)
class TrainingPlan:
    """How a client trains over all rounds, and what it costs (``noise_multiplier`` None: not private)."""

    n_train: int  # training images (public: image counts are)
    sample_rate: float  # Poisson rate of an image per step (Opacus: 1 / batches per epoch)
    steps_per_round: int
    rounds: int
    noise_multiplier: float | None  # DP-SGD σ / max_grad_norm; None: plain training, no guarantee
    report_noise_multiplier: float | None  # of the (R, C) reports; None: no reports or not private
    max_grad_norm: float
    ledger: PrivacyLedger | None = None  # every mechanism of this training (None: not private)

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None

    @property
    def epsilon(self) -> float | None:
        return None if self.ledger is None else self.ledger.epsilon()

    def budget(self) -> dict[str, Any]:
        """JSON-ready: what the training spends (``epsilon`` null: no guarantee)."""
        return {
            "mechanism": "dp_cvae",
            "enabled": self.private,
            "private": self.private,
            "epsilon": self.epsilon,
            "delta": None if self.ledger is None else self.ledger.delta,
            "accountant": None if self.ledger is None else self.ledger.accountant,
            "unit": "image",
            "neighbouring": "replace-one image",
            "clipping": "per image (all its patches in one example)",
            "noise_multiplier": self.noise_multiplier,
            # The rows release's "sigma" (what experiment.sigma publishes): the noise std of a step's
            # summed clipped gradients.
            "sigma": None if self.noise_multiplier is None else self.noise_multiplier * self.max_grad_norm,
            "report_noise_multiplier": self.report_noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps": self.steps_per_round * self.rounds,
            "rounds": self.rounds,
            "n_train_images": self.n_train,
            "entries": [] if self.ledger is None else [list(e) for e in self.ledger.entries],
        }


def plan_training(
    n_train: int,
    settings: CVAESettings,
    *,
    epsilon: float | None,
    delta: float,
    accountant: str,
) -> TrainingPlan:
    """The client's DP-SGD schedule within ``epsilon`` (None or ∞: not private).

    Its ledger holds, when the averaging needs them, the (R, C) reports of every round, noised
    to spend ``report_epsilon_share`` × ``epsilon`` alone, then DP-SGD with the smallest noise
    multiplier that keeps the total within ``epsilon``. The site's persistent ledger composes
    this release with everything else it released about the same images.
    """
    if n_train < 1:
        raise ValueError("a client needs at least one training image for the DP-CVAE")
    batches = math.ceil(n_train / settings.batch_images)
    sample_rate = 1.0 / batches
    steps = settings.local_epochs * batches
    rounds = settings.rounds
    if epsilon is None or math.isinf(epsilon):
        return TrainingPlan(n_train, sample_rate, steps, rounds, None, None, settings.max_grad_norm)
    report, noise = _noise_multipliers(
        float(epsilon),
        float(delta),
        accountant,
        sample_rate,
        steps * rounds,
        rounds,
        settings.report_epsilon_share if settings.reports else None,
    )
    ledger = PrivacyLedger(accountant, delta)
    if report is not None:
        ledger.record("dp_cvae_reports", report, 1.0, rounds)
    ledger.record("dp_cvae_sgd", noise, sample_rate, steps * rounds)
    return TrainingPlan(n_train, sample_rate, steps, rounds, noise, report, settings.max_grad_norm, ledger)


@functools.lru_cache(maxsize=256)
def _noise_multipliers(
    epsilon: float,
    delta: float,
    accountant: str,
    sample_rate: float,
    steps: int,
    rounds: int,
    report_share: float | None,
) -> tuple[float | None, float]:
    """(reports' z or None, DP-SGD's z): the accountant's search is slow (seconds for PRV), and
    every client and round of a run asks the same question."""
    if report_share is None:
        return None, noise_multiplier_for(epsilon, delta, accountant, sample_rate=sample_rate, steps=steps)
    report = noise_multiplier_for(report_share * epsilon, delta, accountant, steps=rounds)
    ledger = PrivacyLedger(accountant, delta).record("dp_cvae_reports", report, 1.0, rounds)
    return report, ledger.noise_multiplier_within(epsilon, sample_rate, steps)


def noise_seed_for(noise_seed: int | None, *labels: int | str) -> int:
    """Seed of batch sampling and DP noise: OS entropy (``noise_seed`` None) or derived, reproducible."""
    return secrets.randbits(63) if noise_seed is None else derive_seed(noise_seed, "dp_cvae_noise", *labels)


def torch_noise_generator(noise_seed: int | None, *labels: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(noise_seed_for(noise_seed, *labels))


# --------------------------------------------------------------------------- local training


@dataclass
class LocalResult:
    """A client's model after one round of local training, and what it reports."""

    arrays: dict[str, np.ndarray]
    losses: list[float]  # mean image loss per local epoch (stays on the site: not private)
    numbers: dict[str, float] = field(default_factory=dict)  # the (R, C) reports, when made
    # What Opacus' own accountant recorded in this round: (noise multiplier, sample rate, steps).
    accountant_history: list[tuple[float, float, int]] = field(default_factory=list)


def prior_mean(shape: ModelShape, drift: float, seed: int, client_id: str) -> torch.Tensor:
    """N(μ₀, I)'s mean: 0, or ``drift`` × a seeded unit vector (a client with encoder drift)."""
    if not drift:
        return torch.zeros(shape.latent_dim)
    direction = derive_rng(seed, "encoder_drift", str(client_id)).normal(size=shape.latent_dim)
    return torch.as_tensor(drift * direction / np.linalg.norm(direction), dtype=torch.float32)


def train_local(
    shape: ModelShape,
    weights: Mapping[str, np.ndarray],
    data: GenerativeData,
    settings: CVAESettings,
    plan: TrainingPlan,
    *,
    seed: int,
    client_id: str,
    round_number: int,
    noise_seed: int | None = None,
    drift: float = 0.0,
) -> LocalResult:
    """One round of local training from ``weights`` on the client's non-held-out images.

    Private plan: Opacus DP-SGD (Adam on the noised, per-image clipped gradients), Poisson
    sampling of images, ``plan.steps_per_round`` steps. Not private: the same number of epochs
    of plain mini-batch Adam. The VAE's sampling noise is seeded (seed, client, round). Runs on
    ``settings.num_threads`` torch threads (small matrix products gain nothing from more).
    """
    previous_threads = set_torch_threads(settings.num_threads)
    try:
        with warnings.catch_warnings():
            # Opacus' advice to use its (slow) cryptographic RNG and a torch notice about backward
            # hooks on inputs without gradients: neither concerns this training.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return _train_local(
                shape, weights, data, settings, plan, seed, client_id, round_number, noise_seed, drift
            )
    finally:
        set_torch_threads(previous_threads)


def _train_local(
    shape, weights, data, settings, plan, seed, client_id, round_number, noise_seed, drift
) -> LocalResult:
    model = load_model(shape, weights)
    train = ~data.holdout
    dataset = torch.utils.data.TensorDataset(
        torch.as_tensor(data.x[train]), torch.as_tensor(data.conditions[train])
    )
    mean = prior_mean(shape, drift, seed, client_id)
    vae_noise = torch.Generator().manual_seed(derive_seed(seed, "dp_cvae_eps", str(client_id), round_number))
    sampling = torch_noise_generator(noise_seed, str(client_id), round_number, "batches")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=settings.batch_images, shuffle=not plan.private, generator=sampling
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    trained: nn.Module = model
    engine = None
    if plan.private:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant=plan.ledger.opacus_accountant)
        trained, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            poisson_sampling=True,
            noise_generator=torch_noise_generator(noise_seed, str(client_id), round_number, "gradients"),
        )
        if abs(1.0 / len(loader) - plan.sample_rate) > 1e-12:
            raise RuntimeError(
                f"Opacus samples at rate {1.0 / len(loader)}, the plan accounted {plan.sample_rate}"
            )
    trained.train()
    losses = []
    for _ in range(settings.local_epochs):
        total, count = 0.0, 0
        for xb, cb in loader:
            eps = torch.randn(*xb.shape[:-1], shape.latent_dim, generator=vae_noise)
            optimizer.zero_grad(set_to_none=True)
            per_image = image_losses(trained, xb, cb, eps, mean, settings)
            # Mean over the batch's images (Opacus' "mean" reduction); an empty Poisson batch still steps (noise only).
            (per_image.sum() / max(1, len(per_image))).backward()
            optimizer.step()
            total, count = total + float(per_image.detach().sum()), count + len(per_image)
        losses.append(total / max(1, count))
    history = (
        [] if engine is None else [(float(z), float(q), int(n)) for z, q, n in engine.accountant.history]
    )
    if engine is not None and sum(n for _, _, n in history) != plan.steps_per_round:
        raise RuntimeError(
            f"client {client_id} took {sum(n for _, _, n in history)} DP-SGD steps, the plan accounted {plan.steps_per_round}"
        )
    arrays = model_arrays(trained)
    numbers = {}
    if settings.reports:
        numbers = client_reports(
            shape,
            arrays,
            data,
            settings,
            plan,
            seed=seed,
            client_id=client_id,
            round_number=round_number,
            noise_seed=noise_seed,
        )
    return LocalResult(arrays, losses, numbers, history)


# --------------------------------------------------------------------------- the (R, C) reports


def held_out_codes(
    shape: ModelShape,
    arrays: Mapping[str, np.ndarray],
    x: np.ndarray,
    c: np.ndarray,
    eps: torch.Tensor,
) -> tuple[np.ndarray, torch.Tensor]:
    """Per image its reconstruction error (mean over patches and dimensions, model units), and
    every patch's latent code (n, m, k), under the model ``arrays``."""
    model = load_model(shape, arrays).eval()
    with torch.no_grad():
        xt, ct = torch.as_tensor(x), torch.as_tensor(c)
        recon, _, _, z = model(xt, ct, eps)
        error = ((recon - xt) ** 2).mean(dim=(-1, -2))
    return error.numpy().astype(np.float64), z


def client_reports(
    shape: ModelShape,
    arrays: Mapping[str, np.ndarray],
    data: GenerativeData,
    settings: CVAESettings,
    plan: TrainingPlan,
    *,
    seed: int,
    client_id: str,
    round_number: int,
    noise_seed: int | None = None,
) -> dict[str, float]:
    """``report.reconstruction.<category>`` and ``report.consistency.<category>`` of the held-out images.

    R: the mean over the category's n held-out images of each image's reconstruction error,
    clipped to [0, ``report_clip``]; C: the (biased) MMD² between all their N = n·m latent codes
    and N(0, I) (the global prior, whatever the client's own), in [0, 2]. Replacing one image
    moves R by at most ``report_clip``/n and C by at most 4/n (its m codes enter at most 2mN of
    the N² kernel pairs and m of the N prior terms, each kernel value in [0, 1]). Scaled to
    R/report_clip and C/2, the pair moves by at most √5/n; private plans add N(0, (z·√5/n)²) to
    both, z = the plan's ``report_noise_multiplier``, and clip back to the range (post-processing).
    A category without held-out images reports nothing.
    """
    held = np.flatnonzero(data.holdout)
    if not len(held):
        return {}
    generator = torch.Generator().manual_seed(
        derive_seed(seed, "dp_cvae_report", str(client_id), round_number)
    )
    eps = torch.randn(len(held), data.x.shape[1], shape.latent_dim, generator=generator)
    error, codes = held_out_codes(shape, arrays, data.x[held], data.conditions[held], eps)
    rng = None
    if plan.report_noise_multiplier is not None:
        rng = np.random.default_rng(noise_seed_for(noise_seed, str(client_id), round_number, "reports"))
    numbers = {}
    for index, category in enumerate(shape.categories):
        mine = data.category[held] == index
        n = int(mine.sum())
        if not n:
            continue
        pooled = codes[torch.as_tensor(mine)].reshape(1, -1, shape.latent_dim)
        consistency = float(mmd2_to_gaussian(pooled, torch.zeros(shape.latent_dim), settings.bandwidth2)[0])
        unit = np.array(
            [
                np.clip(error[mine], 0.0, settings.report_clip).mean() / settings.report_clip,
                min(max(consistency, 0.0), MMD2_BOUND) / MMD2_BOUND,
            ]
        )
        if rng is not None:
            noisy = unit + rng.normal(0.0, plan.report_noise_multiplier * math.sqrt(5.0) / n, size=2)
            unit = np.clip(noisy, 0.0, 1.0)
        numbers[f"{RECONSTRUCTION}.{category}"] = float(unit[0] * settings.report_clip)
        numbers[f"{CONSISTENCY}.{category}"] = float(unit[1] * MMD2_BOUND)
    return numbers


def audit_mechanism(
    settings: CVAESettings,
    *,
    epsilon: float | None,
    delta: float,
    accountant: str,
    seed: int,
) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """The DP-CVAE release as ``(vectors, rng) -> output`` for the canary audit.

    ``vectors``: ``(n, m, d)`` small public inputs, one category without position condition;
    a lone client trains on them for ``settings.rounds`` rounds from the public initial model, exactly as
    a site does (its held-out share, its plan within ``epsilon``, batch sampling and DP noise from
    ``rng``). The output is what the server receives: the final weights and, with trust-aware
    averaging, every round's (R, C) reports.
    """
    scaled = replace(settings, position_grid=0)

    def release(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32) / np.float32(scaled.feature_scale)
        shape = ModelShape(int(vectors.shape[-1]), ("audit",), 0, scaled.latent_dim, scaled.hidden_dim)
        keys = [f"audit{i}" for i in range(len(vectors))]
        data = GenerativeData(
            vectors,
            conditions_for(shape, "audit", np.zeros(vectors.shape[:2], dtype=np.int64)),
            np.zeros(len(vectors), dtype=np.int64),
            is_held_out(keys, scaled.holdout_fraction, seed, "audit"),
        )
        plan = plan_training(
            int((~data.holdout).sum()), scaled, epsilon=epsilon, delta=delta, accountant=accountant
        )
        weights, reports = initial_weights(shape, seed), []
        for round_number in range(1, scaled.rounds + 1):
            result = train_local(
                shape,
                weights,
                data,
                scaled,
                plan,
                seed=seed,
                client_id="audit",
                round_number=round_number,
                noise_seed=int(rng.integers(2**62)),
            )
            weights = result.arrays
            reports += [result.numbers[k] for k in sorted(result.numbers)]
        return np.concatenate([*(w.ravel() for w in weights.values()), np.asarray(reports, dtype=np.float32)])

    return release


# --------------------------------------------------------------------------- the synthetic bank


def sample_embeddings(
    shape: ModelShape,
    arrays: Mapping[str, np.ndarray],
    category: str,
    count: int,
    settings: CVAESettings,
    seed: int,
) -> np.ndarray:
    """``count`` patch vectors of ``category`` from the decoder (z ~ N(0, I), cells in equal shares),
    in the backbone's units (× ``feature_scale``)."""
    model = load_model(shape, arrays).eval()
    generator = torch.Generator().manual_seed(derive_seed(seed, "dp_cvae_sample", category))
    cells = np.arange(count) % shape.n_cells if shape.n_cells else np.zeros(count, dtype=np.int64)
    with torch.no_grad():
        z = torch.randn(count, shape.latent_dim, generator=generator)
        decoded = model.decode(z, torch.as_tensor(conditions_for(shape, category, cells)))
    return (decoded.numpy() * np.float32(settings.feature_scale)).astype(np.float32)


def synthetic_bank(
    shape: ModelShape,
    arrays: Mapping[str, np.ndarray],
    n_images: Mapping[str, int],
    settings: CVAESettings,
    *,
    seed: int,
    projection_dim: int | None = None,
) -> tuple[CategoryBanks, dict[str, np.ndarray]]:
    """Per category ``samples_per_category`` decoded vectors, k-center thinned to ``bank_size`` rows.

    Post-processing of the released model: no further privacy cost. Returns the bank (every
    row's origin ``synthetic``) and the full samples (for the fidelity measures).
    """
    banks, samples, origin, origin_row = {}, {}, {}, {}
    for category in shape.categories:
        drawn = sample_embeddings(shape, arrays, category, settings.samples_per_category, settings, seed)
        chosen = greedy_kcenter(drawn, settings.bank_size, projection_dim=projection_dim, seed=seed)
        banks[category], samples[category] = drawn[chosen], drawn
        origin[category] = np.full(len(chosen), "synthetic")
        origin_row[category] = np.asarray(chosen, dtype=np.int64)
    return CategoryBanks(banks, {c: int(n_images.get(c, 0)) for c in banks}, origin, origin_row), samples


def weights_to_arrays(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat ``weight/<name>`` form (a catalog file, a Flower record)."""
    return pack(weight=weights)


def arrays_to_weights(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(value, np.float32)
        for name, value in unpack(arrays, ("weight",), "a DP-CVAE model")["weight"].items()
    }
