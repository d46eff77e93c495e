"""The library: plain Python + numpy/torch/faiss, no Kedro and no Flower import.

One sub-package per stage of the flow. A stage may import the stages listed before it and
never one after it (``tests/test_architecture.py`` checks it on every run)::

    common      seeds, devices and threads, quota arithmetic, the error for bad input: what
                every stage uses
    data        readers (AutoVI, MVTec, folders), the synthetic default, layout checks, download
    features    backbones, patch embedding, image batches, streamed extraction, feature files,
                the public random projection, a category's setting
    coreset     greedy k-center (plain and skipping loop), k-center over a feature file
    banks       the per-category bank container that crosses the network, nearest-neighbour search
    privacy     DP release of a client's rows or of a DP-CVAE of them, accountants, the budget
                ledger, averaging of model weights
    experts     logical-defect experts (global, position, composition) from mergeable statistics,
                fusion with PatchCore
    federation  partition, heterogeneity, aggregation strategies, trust, fairness, client, server,
                the rounds of federated DP-CVAE training
    scoring     patch scores -> anomaly maps and image scores, experts' scores and fusion,
                thresholds, predicting new images
    evaluation  metrics (AutoVI / MVTec semantics), exported maps, the membership audit, fidelity
                of synthetic banks
    tuning      validation split, pseudo-anomalies, the per-category tuner, fusion rule choice
    explain     why an image was flagged: neighbours, gradients, SHAP; only the asker's pixels
    reporting   curves, experiment tables and figures built from results

Kedro pipelines (``fedpatchcore.pipelines``) and Flower apps (``fedpatchcore.flower``) are thin
adapters over these.
"""

#: The stages in flow order: a module of stage i imports only stages 0..i (checked by a test).
STAGES = (
    "common",
    "data",
    "features",
    "coreset",
    "banks",
    "privacy",
    "experts",
    "federation",
    "scoring",
    "evaluation",
    "tuning",
    "explain",
    "reporting",
)
