"""Privacy accounting: σ from (ε, δ) and ε from σ through maintained accountants, and a ledger.

σ comes from a maintained accountant, never from a formula written here: Opacus'
``get_noise_multiplier`` with its RDP or PRV accountant, or dp-accounting's analytic Gaussian
(Balle & Wang 2018). :class:`PrivacyLedger` composes every mechanism one client ran on the
same data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ACCOUNTANTS", "PrivacyLedger", "epsilon_for", "epsilon_spent", "noise_multiplier_for", "sigma_for"]

ACCOUNTANTS = ("rdp", "prv", "analytic_gaussian")


def _opacus_accountant(name: str):
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=name)


def _check_accountant(accountant: str, sample_rate: float) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"privacy.accountant must be one of {list(ACCOUNTANTS)}, got {accountant!r}")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    if accountant == "analytic_gaussian" and sample_rate != 1.0:
        raise ValueError("the analytic Gaussian accountant has no subsampling: use 'rdp' or 'prv' for DP-SGD")


@functools.lru_cache(maxsize=256)
def noise_multiplier_for(
    epsilon: float, delta: float, accountant: str, *, sample_rate: float = 1.0, steps: int = 1
) -> float:
    """Noise std per unit of L2 sensitivity for an (ε, δ) budget over ``steps`` Gaussian releases.

    ``sample_rate`` 1 is the plain Gaussian mechanism (our release); < 1 is Poisson-subsampled
    (DP-SGD). Opacus' ``get_noise_multiplier`` for ``rdp``/``prv`` (a binary search that stops
    within 0.01 *below* ε); dp-accounting's ``get_sigma_gaussian`` for ``analytic_gaussian``
    (k identical Gaussian releases are one release with √k times the sensitivity).
    """
    _check_accountant(accountant, sample_rate)
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"privacy.epsilon must be a positive number, got {epsilon}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"privacy.delta must lie in (0, 1), got {delta}")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"the number of releases must be >= 1, got {steps}")
    if accountant == "analytic_gaussian":
        import dp_accounting

        return float(dp_accounting.get_sigma_gaussian(float(epsilon), float(delta)) * math.sqrt(steps))
    from opacus.accountants.utils import get_noise_multiplier

    with np.errstate(divide="ignore"):  # PRV at sample rate 1 takes log(1 - q) = -inf on purpose
        return float(
            get_noise_multiplier(
                target_epsilon=float(epsilon),
                target_delta=float(delta),
                sample_rate=float(sample_rate),
                steps=steps,
                accountant=accountant,
            )
        )


def epsilon_for(
    noise_multiplier: float, delta: float, accountant: str, *, sample_rate: float = 1.0, steps: int = 1
) -> float:
    """ε spent by ``steps`` Gaussian releases of this noise multiplier, by the same accountant."""
    return PrivacyLedger(accountant, delta).record("release", noise_multiplier, sample_rate, steps).epsilon()


def sigma_for(epsilon: float, delta: float, sensitivity: float, accountant: str, releases: int = 1) -> float:
    """The noise std (per coordinate) for an (ε, δ) budget over ``releases`` releases of L2 sensitivity Δ."""
    return noise_multiplier_for(float(epsilon), float(delta), accountant, steps=int(releases)) * float(sensitivity)


def epsilon_spent(sigma: float, delta: float, sensitivity: float, accountant: str, releases: int = 1) -> float:
    """ε of ``releases`` Gaussian releases with noise std ``sigma`` and L2 sensitivity Δ."""
    return epsilon_for(float(sigma) / float(sensitivity), delta, accountant, steps=int(releases))


@dataclass
class PrivacyLedger:
    """Everything one client releases about the same data, composed by one accountant.

    Each entry is a Gaussian mechanism: ``(name, noise multiplier, sample rate, steps)``. The
    patch release records ``(σ/Δ, 1, 1)``; a model trained with Opacus' DP-SGD records its
    optimiser's noise multiplier, sample rate and steps (:meth:`record_opacus` reads them from
    the ``PrivacyEngine``). For a model trained *after* the release within one total budget:
    ``ledger.noise_multiplier_within(total_epsilon, sample_rate, steps)`` for
    ``PrivacyEngine.make_private(noise_multiplier=...)``; with nothing spent before, Opacus'
    ``make_private_with_epsilon(..., accountant=ledger.opacus_accountant)`` gives the same.
    """

    accountant: str
    delta: float
    entries: list[tuple[str, float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_accountant(self.accountant, 1.0)

    @property
    def opacus_accountant(self) -> str:
        """The accountant name Opacus' ``PrivacyEngine(accountant=...)`` takes for this ledger."""
        if self.accountant == "analytic_gaussian":
            return "prv"  # the tight numerical accountant; the analytic one cannot subsample
        return self.accountant

    def record(self, name: str, noise_multiplier: float, sample_rate: float = 1.0, steps: int = 1) -> PrivacyLedger:
        _check_accountant(self.accountant, sample_rate)
        if not noise_multiplier > 0:
            raise ValueError(f"{name}: the noise multiplier must be positive, got {noise_multiplier}")
        self.entries.append((str(name), float(noise_multiplier), float(sample_rate), int(steps)))
        return self

    def record_opacus(self, name: str, privacy_engine: Any) -> PrivacyLedger:
        """Add what an Opacus ``PrivacyEngine`` has spent (its accountant's history)."""
        for noise_multiplier, sample_rate, steps in privacy_engine.accountant.history:
            self.record(name, noise_multiplier, sample_rate, steps)
        return self

    def epsilon(self, entries: Sequence[tuple[str, float, float, int]] | None = None) -> float:
        """ε of every recorded mechanism together at this ledger's δ (0 when nothing was recorded)."""
        entries = self.entries if entries is None else entries
        if not entries:
            return 0.0
        if self.accountant == "analytic_gaussian":
            import dp_accounting

            # Gaussian mechanisms compose into one Gaussian: μ² = Σ steps / z² (Dong et al., GDP).
            mu_squared = sum(steps / z**2 for _, z, _, steps in entries)
            return float(dp_accounting.get_epsilon_gaussian(1.0 / math.sqrt(mu_squared), self.delta))
        accountant = _opacus_accountant(self.accountant)
        accountant.history = [(z, q, steps) for _, z, q, steps in entries]
        with np.errstate(divide="ignore"):
            return float(accountant.get_epsilon(delta=self.delta))

    def noise_multiplier_within(
        self, total_epsilon: float, sample_rate: float, steps: int, tolerance: float = 0.01
    ) -> float:
        """The smallest noise multiplier a further mechanism may use so the total stays ≤ ``total_epsilon``."""
        if self.epsilon() >= total_epsilon:
            raise ValueError(f"the budget ε={total_epsilon} is already spent ({self.epsilon():.3f})")

        def total(z: float) -> float:
            return self.epsilon([*self.entries, ("next", z, sample_rate, steps)])

        low, high = 0.0, 1.0
        while total(high) > total_epsilon:
            low, high = high, high * 2
            if high > 1e6:
                raise ValueError(f"the budget ε={total_epsilon} leaves no room for another mechanism")
        while total(high) < total_epsilon - tolerance and high - low > 1e-6:
            middle = (low + high) / 2
            if total(middle) > total_epsilon:
                low = middle
            else:
                high = middle
        return high
