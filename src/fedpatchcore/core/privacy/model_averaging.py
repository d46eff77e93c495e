"""Averaging clients' model weights: the server's step of federated DP-CVAE training.

FedAvg (McMahan et al. 2017) weighs each client's weights by its number of training examples;
trust-aware averaging multiplies those by a trust score per client
(:func:`fedpatchcore.core.federation.trust.model_trust_scores` computes it). Both are
post-processing of what the clients released: they cost no privacy.

The average is taken in float64 and cast back to float32, so averaging identical models gives
exactly those weights back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def weighted_average(
    models: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Σ wᵢ·modelᵢ / Σ wᵢ per parameter; every model must hold the same parameters and shapes.

    A weight of 0 leaves a model out; negative weights, all-zero weights or mismatched models
    raise ValueError naming the problem.
    """
    if not models:
        raise ValueError("no model to average")
    if len(models) != len(weights):
        raise ValueError(f"{len(models)} models but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"averaging weights must be finite and >= 0, got {list(w)}")
    if w.sum() <= 0:
        raise ValueError("every averaging weight is 0: no model left to average")
    w = w / w.sum()
    names = list(models[0])
    for index, model in enumerate(models[1:], 1):
        if set(model) != set(names):
            raise ValueError(f"model {index} holds parameters {sorted(model)}, model 0 {sorted(names)}")
    out = {}
    for name in names:
        shapes = {np.shape(model[name]) for model in models}
        if len(shapes) > 1:
            raise ValueError(f"parameter '{name}' has different shapes across models: {sorted(shapes)}")
        total = np.zeros(np.shape(models[0][name]), dtype=np.float64)
        for weight, model in zip(w, models, strict=True):
            if weight:
                total += weight * np.asarray(model[name], dtype=np.float64)
        out[name] = total.astype(np.float32)
    return out


def fedavg_weights(n_examples: Mapping[str, int]) -> dict[str, float]:
    """FedAvg: each client weighs as many training examples as it has."""
    return {client_id: float(n) for client_id, n in n_examples.items()}
