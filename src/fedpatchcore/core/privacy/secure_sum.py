"""Distributed noise: the clients of a category share one release's noise, the server sees only the sum.

For a summary round (:mod:`.summary`), each of the ``n`` clients holding a category adds
N(0, σ²/(n − t)) to its own sums, where ``t = max_dropouts``; the server learns only the sum of
the clients' vectors, through Flower's SecAgg+ (``secaggplus_mod`` on the ClientApp,
``SecAggPlusWorkflow`` on the ServerApp: :mod:`fedpatchcore.flower.secure_summary`) or, in
process, :func:`pooled_sum` of the lanes' shares. The sum then carries noise of variance
σ²·(n − d)/(n − t) ≥ σ² whenever at most ``t`` of them drop out (d ≤ t): the guarantee of one
central release of σ, while no single client's statistic is seen.

What it assumes:

* an honest-but-curious server that runs the protocol as written (SecAgg+ hides each vector
  from it; a server that lies about dropouts to unmask a client is not covered: SecAgg+
  refuses to unmask a vector whose owner is reported both alive and dropped, up to its
  ``reconstruction_threshold``);
* at most ``t`` clients of a category drop out of a round (more: the sum holds less than σ²
  of noise and that round's guarantee is weaker than claimed; the ledger records the claim);
* clients that do not collude with the server: a coalition of the server and all but one
  client of a category sees that client's statistic with only its own share, σ²/(n − t), of
  the noise;
* a category held by a single client gets the whole σ² from it (no secure sum needed).

SecAgg+ sums integers: vectors are scaled by a public bound (:func:`scale_for`) into
``[-1, 1]`` and quantised with ``quantization_bits``; the quantisation error of the sum is at
most ``n · scale / 2^(bits-1)`` per coordinate, far under σ for the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SECURE_AGGREGATION_KEYS = ("max_dropouts", "num_shares", "reconstruction_threshold", "quantization_bits")


@dataclass(frozen=True)
class SecureAggregationSettings:
    """The ``privacy.secure_aggregation`` block (summary rounds)."""

    max_dropouts: int = 0  # t: clients of a category that may drop out of a round with σ² still in the sum
    num_shares: float = 1.0  # SecAgg+: shares of each client's key (a float: share of the clients)
    reconstruction_threshold: float = 0.5  # SecAgg+: shares needed to unmask (a float: share of num_shares)
    quantization_bits: int = 22  # SecAgg+: integers of this many bits carry each coordinate

    def __post_init__(self) -> None:
        if self.max_dropouts < 0:
            raise ValueError(f"privacy.secure_aggregation.max_dropouts must be >= 0, got {self.max_dropouts}")
        if not self.num_shares > 0:
            raise ValueError(f"privacy.secure_aggregation.num_shares must be positive, got {self.num_shares}")
        if not self.reconstruction_threshold > 0:
            raise ValueError(
                f"privacy.secure_aggregation.reconstruction_threshold must be positive, got {self.reconstruction_threshold}"
            )
        if not 8 <= self.quantization_bits <= 30:
            raise ValueError(f"privacy.secure_aggregation.quantization_bits must lie in [8, 30], got {self.quantization_bits}")

    @classmethod
    def from_parameters(cls, block: Mapping[str, Any] | None) -> SecureAggregationSettings:
        block = dict(block or {})
        unknown = sorted(set(block) - set(SECURE_AGGREGATION_KEYS))
        if unknown:
            raise ValueError(
                f"privacy.secure_aggregation: unknown keys {unknown}; expected some of {list(SECURE_AGGREGATION_KEYS)}"
            )
        defaults = cls()
        return cls(
            max_dropouts=int(block.get("max_dropouts", defaults.max_dropouts)),
            num_shares=float(block.get("num_shares", defaults.num_shares)),
            reconstruction_threshold=float(block.get("reconstruction_threshold", defaults.reconstruction_threshold)),
            quantization_bits=int(block.get("quantization_bits", defaults.quantization_bits)),
        )


def share_sigma(sigma: float, n_clients: int, max_dropouts: int = 0) -> float:
    """Noise std each of ``n_clients`` adds so that the sum of any n − t of them has std ≥ ``sigma``."""
    if n_clients < 1:
        raise ValueError(f"a category needs at least one client, got {n_clients}")
    survivors = n_clients - int(max_dropouts)
    if survivors < 1:
        raise ValueError(
            f"privacy.secure_aggregation.max_dropouts={max_dropouts} leaves no client of {n_clients} to carry the noise"
        )
    return float(sigma) / math.sqrt(survivors)


def noise_share(statistic: np.ndarray, sigma: float, n_clients: int, max_dropouts: int, rng: np.random.Generator) -> np.ndarray:
    """A client's statistic plus its share of the noise (float64)."""
    statistic = np.asarray(statistic, dtype=np.float64)
    std = share_sigma(sigma, n_clients, max_dropouts)
    return statistic + (rng.normal(0.0, std, size=statistic.shape) if std > 0 else 0.0)


def pooled_sum(shares: Sequence[np.ndarray]) -> np.ndarray:
    """What the server learns: the sum of the clients' noisy vectors (the in-process secure sum)."""
    if not shares:
        raise ValueError("a secure sum needs at least one share")
    total = np.zeros_like(np.asarray(shares[0], dtype=np.float64))
    for share in shares:
        total += np.asarray(share, dtype=np.float64)
    return total


def scale_for(n_images: int, contribution_clip: float, sigma_share: float) -> float:
    """A public bound on a client's noisy vector's coordinates: its images' clipped contributions
    (each coordinate of a sum of n contributions of norm ≤ B is ≤ n·B) plus 8 noise stds."""
    return max(float(n_images) * float(contribution_clip) + 8.0 * float(sigma_share), 1e-6)
