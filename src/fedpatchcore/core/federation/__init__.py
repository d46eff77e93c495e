"""The rules of federation, for every transport (Kedro lanes in one process, Flower apps).

``partition`` (which client holds which image), ``heterogeneity`` (what is wrong at a site:
degradations, label noise), ``aggregation`` (per-category selection strategies), ``trust``
(how much the server believes a client), ``fairness`` (quotas among categories or clients),
``client`` (one factory: extract patch features, choose a local coreset, build the upload of
a round) and ``server`` (one round: validate uploads, weigh clients, select rows per category,
return the global bank with every row's origin and a JSON-ready report).

Plain Python on arrays and dicts: no Kedro, no Flower.
Imports: ``common``, ``data``, ``features``, ``coreset``, ``banks``, ``privacy``.
"""
