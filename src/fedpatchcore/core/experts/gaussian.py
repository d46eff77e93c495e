"""Gaussians fitted from sufficient statistics that merge exactly, with Ledoit-Wolf shrinkage.

A :class:`MomentSums` holds, for a batch of Gaussians (one per grid cell, or just one), the
sums over the samples ``x`` seen so far::

    n,  s1 = Σ x,  s2 = Σ x xᵀ,  s3 = Σ ‖x‖² x,  s4 = Σ ‖x‖⁴

Two sites' sums add up to the sums of their union (:meth:`MomentSums.merge`), so a server
that adds what its clients send gets exactly the statistics of all their images together;
no sample ever leaves a site. ``s3`` and ``s4`` are what Ledoit and Wolf's shrinkage needs
beyond the covariance (``Σ_k ‖x_k − μ‖⁴``, expanded in raw sums in :func:`fit_gaussian`),
so the shrunk covariance is the same as scikit-learn's ``LedoitWolf`` on the pooled samples.

Few images (few-shot, or a category some client holds alone): with ``n`` samples in ``d``
dimensions the sample covariance has rank ``n − 1 < d``; Ledoit-Wolf shrinks it towards a
multiple of the identity, and ``ridge`` adds ``ridge × (average variance)`` on the
diagonal, so the precision always exists. With ONE sample the covariance is zero and
Ledoit-Wolf is undefined: the covariance is then ``ridge × (mean squared value) × I``, and the
Mahalanobis distance is the Euclidean distance to that one sample, rescaled (the experts'
scores are z-normalised on good validation images before they are fused, so only their order
matters). The same holds for samples that do not vary at all (every good image with the same
cluster histogram).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Gaussian", "MomentSums", "fit_gaussian"]

#: An average variance below this share of the mean square is rounding noise of the raw sums.
_NO_VARIANCE = 1e-9


@dataclass
class MomentSums:
    """Sums of powers of samples, for a batch of Gaussians of shape ``batch`` in ``dim`` dimensions."""

    n: np.ndarray  # batch, float64 (counts; float so that sums of uploads stay exact in float64)
    s1: np.ndarray  # batch + (d,)
    s2: np.ndarray  # batch + (d, d)
    s3: np.ndarray  # batch + (d,)
    s4: np.ndarray  # batch

    @classmethod
    def zeros(cls, batch: tuple[int, ...], dim: int) -> MomentSums:
        batch = tuple(int(b) for b in batch)
        return cls(
            np.zeros(batch),
            np.zeros((*batch, dim)),
            np.zeros((*batch, dim, dim)),
            np.zeros((*batch, dim)),
            np.zeros(batch),
        )

    @property
    def dim(self) -> int:
        return int(self.s1.shape[-1])

    @property
    def batch(self) -> tuple[int, ...]:
        return tuple(self.n.shape)

    def add(self, samples: np.ndarray) -> None:
        """Add samples of shape ``(m, *batch, d)`` (m samples for every Gaussian of the batch)."""
        x = np.asarray(samples, dtype=np.float64)
        if x.shape[1:] != (*self.batch, self.dim):
            raise ValueError(f"samples of shape {x.shape[1:]} do not fit Gaussians of shape {(*self.batch, self.dim)}")
        squared = np.einsum("m...d,m...d->m...", x, x)
        self.n += x.shape[0]
        self.s1 += x.sum(axis=0)
        self.s2 += np.einsum("m...i,m...j->...ij", x, x)
        self.s3 += np.einsum("m...,m...d->...d", squared, x)
        self.s4 += (squared**2).sum(axis=0)

    def merge(self, other: MomentSums) -> MomentSums:
        """The sums of both sample sets (neither operand is changed)."""
        if other.batch != self.batch or other.dim != self.dim:
            raise ValueError(
                f"cannot merge statistics of shape {(*other.batch, other.dim)} into {(*self.batch, self.dim)}"
            )
        return MomentSums(
            self.n + other.n, self.s1 + other.s1, self.s2 + other.s2, self.s3 + other.s3, self.s4 + other.s4
        )

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat form ``<prefix>/n`` ... ``<prefix>/s4``; ``s2`` is symmetric and sent as its upper triangle."""
        upper = np.triu_indices(self.dim)
        return {
            f"{prefix}/n": self.n,
            f"{prefix}/s1": self.s1,
            f"{prefix}/s2": self.s2[..., upper[0], upper[1]],
            f"{prefix}/s3": self.s3,
            f"{prefix}/s4": self.s4,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> MomentSums:
        try:
            n, s1, packed, s3, s4 = (np.asarray(arrays[f"{prefix}/{k}"], np.float64) for k in ("n", "s1", "s2", "s3", "s4"))
        except KeyError as missing:
            raise ValueError(f"expert statistics '{prefix}' lack the entry {missing}") from None
        dim = s1.shape[-1]
        upper = np.triu_indices(dim)
        if packed.shape[-1] != len(upper[0]):
            raise ValueError(f"expert statistics '{prefix}/s2' hold {packed.shape[-1]} values, expected {len(upper[0])}")
        s2 = np.zeros((*packed.shape[:-1], dim, dim))
        s2[..., upper[0], upper[1]] = packed
        s2[..., upper[1], upper[0]] = packed
        return cls(n, s1, s2, s3, s4)


@dataclass
class Gaussian:
    """Mean and precision (inverse shrunk covariance) of a batch of Gaussians."""

    mean: np.ndarray  # batch + (d,)
    precision: np.ndarray  # batch + (d, d)
    shrinkage: np.ndarray  # batch: the Ledoit-Wolf intensity used (1.0: the identity target alone)

    def mahalanobis(self, x: np.ndarray) -> np.ndarray:
        """Distances ``sqrt((x − μ)ᵀ P (x − μ))`` of samples ``(..., *batch, d)``, shape ``(..., *batch)``."""
        diff = np.asarray(x, dtype=np.float64) - self.mean
        squared = np.einsum("...i,...ij,...j->...", diff, self.precision, diff)
        return np.sqrt(np.maximum(squared, 0.0))


def fit_gaussian(sums: MomentSums, ridge: float) -> Gaussian:
    """Ledoit-Wolf shrunk Gaussians of ``sums`` (see the module docstring), each needing n >= 1.

    Shrinkage as in scikit-learn's ``ledoit_wolf_shrinkage`` (centred samples ``y = x − μ``,
    ``C = Σ y yᵀ / n``, ``m = tr C / d``): ``β = (Σ‖y‖⁴ / n − ‖C‖²_F) / (d n)``,
    ``δ = ‖C − m I‖²_F / d``, intensity ``min(β, δ) / δ``; covariance ``(1 − α) C + α m I``,
    plus ``ridge × m`` (``ridge`` × mean square when ``m`` is 0) on the diagonal.
    """
    if ridge <= 0:
        raise ValueError(f"experts.ridge must be > 0, got {ridge}")
    n = sums.n
    if np.any(n < 1):
        raise ValueError("a Gaussian needs at least one sample (a category or cell without any image)")
    d = sums.dim
    mean = sums.s1 / n[..., None]
    cov = sums.s2 / n[..., None, None] - mean[..., :, None] * mean[..., None, :]
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    mean_sq = np.einsum("...d,...d->...", mean, mean)
    trace_s2 = np.trace(sums.s2, axis1=-2, axis2=-1)
    # Σ_k ‖x_k − μ‖⁴ from the raw sums
    fourth = (
        sums.s4
        - 4 * np.einsum("...d,...d->...", mean, sums.s3)
        + 4 * np.einsum("...i,...ij,...j->...", mean, sums.s2, mean)
        + 2 * mean_sq * trace_s2
        - 3 * n * mean_sq**2
    )
    trace_c = np.trace(cov, axis1=-2, axis2=-1)
    m = np.maximum(trace_c / d, 0.0)
    frob = np.einsum("...ij,...ij->...", cov, cov)
    beta = np.maximum((fourth / n - frob) / (d * n), 0.0)
    delta = (frob - 2 * m * trace_c + d * m**2) / d
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(delta > 0, np.minimum(beta, delta) / np.where(delta > 0, delta, 1.0), 1.0)
    eye = np.eye(d)
    shrunk = (1 - alpha)[..., None, None] * cov + (alpha * m)[..., None, None] * eye
    # The ridge's scale: the average variance, or, when the samples do not vary (one sample;
    # identical histograms) and what is left of it is cancellation noise, the mean square.
    mean_square = trace_s2 / (n * d)
    scale = np.where(m > _NO_VARIANCE * mean_square, m, mean_square)
    scale = np.where(scale > 0, scale, 1.0)  # all-zero samples: any scale will do
    covariance = shrunk + (ridge * scale)[..., None, None] * eye
    return Gaussian(mean, np.linalg.inv(covariance), alpha)
