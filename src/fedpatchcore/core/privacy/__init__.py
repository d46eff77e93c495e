"""Differential privacy of what a client releases: the release itself (positions, public
projection, clipping, noise, the public map scoring applies to test patches: ``release``),
the accounting of its budget (``accounting``: σ from ε through Opacus / dp-accounting, the
ledger that composes releases), the generative release (``generative``: a conditional VAE of
patch embeddings trained with per-image DP-SGD, its reports, the synthetic bank sampled from
it) and the averaging of released model weights (``model_averaging``).

Imports: ``common``, ``data``, ``features``, ``coreset``, ``banks``.
"""
