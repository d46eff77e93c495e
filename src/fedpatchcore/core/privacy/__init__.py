"""Differential privacy of what a client releases, and the evidence that it holds.

``release``   settings, the public positions and map (projection, clipping), the rows release,
              a site's summary shares, charging the ledger before a release
``summary``   the private summary bank: public centres, DP-Lloyd sums, the server's update
``public``    the public images the summary centres start from
``secure_sum`` distributed noise: each client's share of σ², the sum the server sees (SecAgg+)
``accounting`` σ from (ε, δ) and ε from σ through Opacus / dp-accounting, in-memory composition
``ledger``    the persistent, append-only per-site ledger every release composes into
``audit``     the canary audit: an empirical ε lower bound (Clopper–Pearson) for any release

Imports: ``common``, ``data``, ``features``, ``coreset``, ``banks``.
"""
