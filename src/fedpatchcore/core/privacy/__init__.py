"""Differential privacy of what a client releases: the release itself (positions, public
projection, clipping, noise, the public map scoring applies to test patches: ``release``) and
the accounting of its budget (``accounting``: σ from ε through Opacus / dp-accounting, the
ledger that composes releases).

Imports: ``common``, ``data``, ``features``, ``coreset``, ``banks``.
"""
