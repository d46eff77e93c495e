"""The label-noise robustness grid (conf/robustness) on a synthetic dataset of any size and seed,
over several partition seeds, without Kedro: mean image AUC-ROC per scenario x strategy.

One `kedro run --env robustness` is one dataset, one seed, 67 variants. This script answers
"does it hold elsewhere?" cheaply: it generates a synthetic dataset (``--data-seed``,
``--size``, ``--n-train``, test counts), embeds every image ONCE with the pretrained
EfficientNet-Lite0 (features cached in ``--workdir``), and then, per partition seed and
scenario, runs the project's own code on those features: the IID partition and label noise
(``core/federation/partition.py``, ``heterogeneity.py``: each noisy client its own defective
images, set aside from evaluation), each client's ``select_local_coreset`` + ``build_upload``
(denoising, folds) on a feature file written from the cache, the server's ``run_round``
(federated_coreset | consensus | calibrated_consensus), and ``score_images`` against the global
bank. Scenarios: ``clean``, label noise 5/15/30 % at client 1 (``one``), at every client
(``all``) and at one site holding every image (``site``, no consensus there).

    python benchmarks/robustness_grid.py --data-seed 1 --size 160 --n-train 40 --seeds 0 1 2
    python benchmarks/robustness_grid.py --data-seed 0 --size 128 --n-train 24 --test-good 16 --test-per-defect 6  # the embedded default

``--matched-clean`` adds, to every noisy scenario, federated_coreset on the same partition
before the swap, scored on the same test images (the swap sets the defective images it plants
aside from evaluation, so the ``clean`` row is scored on more and other defects), and prints
the share of that loss each strategy recovers; it also adds ``oracle_filter``, the noisy partition
less every planted image: the swap removed as many clean images, so that is the most a filter can
recover (``--plant beside`` keeps those clean images and only adds the defective ones, so a perfect
filter recovers the whole loss; ``heterogeneity.label_noise`` swaps):

    python benchmarks/robustness_grid.py --data-seed 0 --size 128 --n-train 24 --test-good 16 --test-per-defect 6 \
        --seeds 0 1 2 3 4 5 --strategies federated_coreset denoise denoise_knn_gated --matched-clean

Differences from the Kedro run: features are embedded at float32 in RAM instead of streamed
through fp16 (the k-center projection is the same seeded one); reports and pixel metrics are
not computed. A printed ``load average`` says how busy the machine was (timings only).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.loading import load_image
from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
from fedpatchcore.core.data.types import TEST, TRAIN
from fedpatchcore.core.evaluation.metrics import image_auroc
from fedpatchcore.core.features.extraction import ExtractedFeatures, make_embedder
from fedpatchcore.core.features.feature_store import PatchFeatureWriter
from fedpatchcore.core.federation import client
from fedpatchcore.core.federation.heterogeneity import (
    apply_label_noise,
    label_noise_counts,
    label_noise_pool,
    parse_heterogeneity,
)
from fedpatchcore.core.federation.partition import make_partition
from fedpatchcore.core.federation.server import ServerSettings, run_round
from fedpatchcore.core.scoring.patch_scores import score_images

SHARES = (0.05, 0.15, 0.3)
EMBED_BATCH = 16  # images per forward pass
LOF = {"denoise": "lof", "denoise_share": 0.05, "denoise_image_gate": None}  # as first measured, before the gate
STRATEGIES = {  # name -> (coreset overrides, aggregation strategy), as conf/robustness names them
    "federated_coreset": ({}, "federated_coreset"),
    "denoise+soft_weights": (LOF, "federated_coreset"),  # scored with scoring.soft_weights (not in conf/robustness)
    "consensus": ({}, "consensus"),
    "calibrated_consensus": ({"upload_folds": True}, "calibrated_consensus"),
    "denoise": (LOF, "federated_coreset"),
    "denoise+consensus": (LOF, "consensus"),
    "denoise+calibrated_consensus": ({**LOF, "upload_folds": True}, "calibrated_consensus"),
    "denoise_knn": ({**LOF, "denoise": "knn"}, "federated_coreset"),
    # with coreset.denoise_image_gate (--image-gate; 3.5 = conf/base): kNN is what conf/robustness runs
    "denoise_knn_gated": ({**LOF, "denoise": "knn", "denoise_image_gate": 3.5}, "federated_coreset"),
    "denoise_gated": ({**LOF, "denoise_image_gate": 3.5}, "federated_coreset"),
    # scored with scoring.soft_weights: costs 0.048 on the clean default (seeds 0-11), so not in the defaults
    "denoise_knn_gated+soft_weights": ({**LOF, "denoise": "knn", "denoise_image_gate": 3.5}, "federated_coreset"),
}
#: A noisy scenario's own clean reference: federated_coreset on the partition before the swap,
#: scored on the same test images (the swap sets the defective images it plants aside from
#: evaluation, so the plain ``clean`` row is scored on more and other defects).
MATCHED_CLEAN = "clean_same_test"
#: What a perfect filter reaches: federated_coreset on the noisy partition less every planted image
#: (the swap removed as many clean ones, so this is the most any filter can recover).
ORACLE = "oracle_filter"


def scenarios(num_clients: int) -> dict[str, tuple[int, dict]]:
    out = {"clean": (num_clients, {})}
    for share in SHARES:
        tag = f"{round(share * 100):02d}"
        out[f"label_noise_{tag}"] = (num_clients, {"1": {"label_noise": share}})
        out[f"label_noise_{tag}_all"] = (num_clients, {str(i): {"label_noise": share} for i in range(1, num_clients + 1)})
    out["site_clean"] = (1, {})
    for share in SHARES:
        out[f"site_label_noise_{round(share * 100):02d}"] = (1, {"1": {"label_noise": share}})
    return out


def embed_dataset(root: Path, cache: Path) -> tuple[list, dict, dict[str, np.ndarray]]:
    samples, infos, _ = index_dataset("synthetic", root, "all")
    if cache.exists():
        stored = np.load(cache)
        return samples, infos, {key: stored[key] for key in stored.files}
    embedder = make_embedder({"name": "efficientnet_lite0", "device": "cpu"}, {"num_threads": 2, "neighbourhood": 3})
    features = {}
    for category in sorted(infos):
        mine = [s for s in samples if s.category == category]
        for start in range(0, len(mine), EMBED_BATCH):
            batch = mine[start : start + EMBED_BATCH]
            images = np.stack([load_image(s.image_path, infos[category].image_size) for s in batch])
            features.update(zip((s.key for s in batch), embedder.embed(images), strict=True))
    np.savez(cache, **features)
    return samples, infos, features


def run_scenario(
    samples, infos, features, workdir: Path, seed: int, num_clients: int, heterogeneity: dict, names, options=None,
    plant: str = "swap",
):
    """{strategy: {category: image AUC-ROC}} for one partition seed and scenario (``plant``: the
    defective images replace as many clean ones, as ``heterogeneity.label_noise`` does, or join
    them, ``beside``)."""
    train = [s for s in samples if s.split == TRAIN]
    assignment = make_partition(train, "iid", num_clients=num_clients, seed=seed)
    specs = parse_heterogeneity(heterogeneity)
    category_of = {s.key: s.category for s in samples}
    needed: dict[str, int] = {}
    for cid, keys in assignment.items():
        if cid in specs and specs[cid].label_noise:
            per = {}
            for key in keys:
                per[category_of[key]] = per.get(category_of[key], 0) + 1
            for category, count in label_noise_counts(per, specs[cid].label_noise).items():
                needed[category] = needed.get(category, 0) + count
    defective = {}
    for s in samples:
        if s.split == TEST and s.label == 1:
            defective.setdefault(s.category, []).append(s.key)
    pool = label_noise_pool(defective, needed, seed)
    clean_assignment = assignment
    assignment, swaps = apply_label_noise(assignment, samples, specs, pool, seed)
    if plant == "beside":  # the clean images the swap removed stay: the folder only gains defective ones
        removed = {cid: {k for per in by_cat.values() for k in per["removed"]} for cid, by_cat in swaps.items()}
        assignment = {cid: sorted(set(keys) | removed.get(str(cid), set())) for cid, keys in assignment.items()}
    reserved = {key for keys in pool.values() for key in keys}  # the planted images
    by_key = {s.key: s for s in samples}
    results = {}
    lanes_of = {
        MATCHED_CLEAN: clean_assignment,
        ORACLE: {cid: [k for k in keys if k not in reserved] for cid, keys in assignment.items()},
    }
    for name in names:
        coreset_overrides, strategy = ({}, "federated_coreset") if name in lanes_of else STRATEGIES[name]
        lanes = lanes_of.get(name, assignment)
        coreset = {"ratio": 0.1, "max_size": 20000, "projection_dim": 128, "num_starts": 1, "device": "cpu", **coreset_overrides}
        uploads = []
        for cid, keys in lanes.items():
            run = {"coreset": coreset, "federation": {}, "extraction": {"batch_size": 8, "num_workers": 0}, "seed": seed}
            settings = client.ClientSettings.from_run(run, cid)
            extracted = _feature_files([by_key[k] for k in keys], features, workdir / name / cid, seed)
            uploads.append(client.build_upload(client.select_local_coreset(extracted, settings), settings))
        server = ServerSettings(strategy, None, min_clients=1, projection_dim=128, seed=seed, options=options or {})
        bank = run_round(uploads, server).bank
        per_category = {}
        for category in sorted(bank.banks):
            tests = [s for s in samples if s.category == category and s.split == TEST and s.key not in reserved]
            test_features = np.stack([features[s.key] for s in tests])
            weights = bank.row_weights(category) if name.endswith("soft_weights") else None
            _, scores = score_images(
                build_index(bank.banks[category]), test_features, infos[category].image_size, row_weights=weights
            )
            per_category[category] = image_auroc(scores, [s.label for s in tests])
        results[name] = per_category
    return results


def _feature_files(client_samples, features, folder: Path, seed: int) -> ExtractedFeatures:
    files, keys, grids = {}, {}, {}
    for category in sorted({s.category for s in client_samples}):
        mine = sorted((s for s in client_samples if s.category == category), key=lambda s: s.key)
        stacked = np.stack([features[s.key] for s in mine])
        with PatchFeatureWriter(folder / f"{category}.npy", dim=stacked.shape[-1], projection_dim=128, seed=seed) as writer:
            writer.append(stacked.reshape(-1, stacked.shape[-1]))
        files[category], keys[category], grids[category] = writer.result, [s.key for s in mine], stacked.shape[1:3]
    return ExtractedFeatures(files, keys, grids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--test-good", type=int, default=24)
    parser.add_argument("--test-per-defect", type=int, default=10)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="partition / label-noise / k-center seeds")
    parser.add_argument("--strategies", nargs="+", default=[s for s in STRATEGIES if not s.endswith("soft_weights")])
    parser.add_argument("--scenarios", nargs="+", default=None)
    parser.add_argument("--denoise-min-score", type=float, default=None, help="coreset.denoise_min_score of denoise*")
    parser.add_argument("--denoise-neighbours", type=int, default=None, help="coreset.denoise_neighbours of denoise*")
    parser.add_argument("--denoise-share", type=float, default=None, help="coreset.denoise_share of denoise*")
    parser.add_argument("--image-gate", type=float, default=None, help="coreset.denoise_image_gate of denoise*_gated")
    parser.add_argument(
        "--matched-clean", action="store_true",
        help=f"also score {MATCHED_CLEAN} and {ORACLE} in every noisy scenario and print the share of the loss "
        "each strategy recovers",
    )
    parser.add_argument(
        "--plant", choices=("swap", "beside"), default="swap",
        help="swap: planted defective images replace as many clean ones (heterogeneity.label_noise); beside: they "
        "join them, so a perfect filter recovers the whole loss",
    )
    parser.add_argument("--confirm-quantile", type=float, default=None, help="aggregation.options.confirm_quantile")
    parser.add_argument("--workdir", default=None, help="dataset and feature cache (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write every per-seed, per-category value here")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="robustness_grid_"))
    name = f"synthetic_seed{args.data_seed}_{args.size}px_{args.n_train}train_{args.test_good}good_{args.test_per_defect}def"
    root = workdir / name
    generate_synthetic_dataset(
        root, seed=args.data_seed, image_size=(args.size, args.size), n_train=args.n_train,
        n_test_good=args.test_good, n_test_per_defect=args.test_per_defect,
    )
    started = time.perf_counter()
    samples, infos, features = embed_dataset(root, workdir / f"{name}.features.npz")
    print(f"{name}: {len(samples)} images embedded in {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f}")
    denoise_overrides = {
        "denoise_min_score": args.denoise_min_score,
        "denoise_neighbours": args.denoise_neighbours,
        "denoise_share": args.denoise_share,
    }
    for overrides, _ in STRATEGIES.values():
        if "denoise" not in overrides:
            continue
        overrides.update((key, value) for key, value in denoise_overrides.items() if value is not None)
        if args.image_gate is not None and overrides["denoise_image_gate"] is not None:  # the *_gated ones
            overrides["denoise_image_gate"] = args.image_gate
    grid = scenarios(args.clients)
    chosen = args.scenarios or list(grid)
    values: dict = {}
    for scenario in chosen:
        num_clients, heterogeneity = grid[scenario]
        names = [n for n in args.strategies if num_clients > 1 or "consensus" not in n]
        if args.matched_clean and heterogeneity:
            names += [MATCHED_CLEAN, ORACLE]
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(dir=workdir) as scratch:
                options = {} if args.confirm_quantile is None else {"confirm_quantile": args.confirm_quantile}
                result = run_scenario(
                    samples, infos, features, Path(scratch), seed, num_clients, heterogeneity, names, options, args.plant
                )
            for strategy, per_category in result.items():
                values.setdefault(scenario, {}).setdefault(strategy, {})[seed] = per_category
        means = {s: np.mean([np.mean(list(c.values())) for c in v.values()]) for s, v in values[scenario].items()}
        print(f"{scenario:22s} " + "  ".join(f"{s} {m:.4f}" for s, m in means.items()), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(values, indent=1))
    print(f"done in {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f}")
    print(markdown_table(values))


def markdown_table(values: dict) -> str:
    """Scenario x strategy mean image AUC-ROC (over seeds and categories), each cell with its
    change against the same scenario's federated_coreset, and the share of the noise's loss
    it recovers where the scenario has its matched clean reference."""
    strategies = list(dict.fromkeys(s for per in values.values() for s in per))
    lines = ["| scenario | " + " | ".join(strategies) + " |", "| --- |" + " --- |" * len(strategies)]
    for scenario, per in values.items():
        means = {s: np.mean([np.mean(list(c.values())) for c in v.values()]) for s, v in per.items()}
        base = means.get("federated_coreset")
        loss = None if base is None or MATCHED_CLEAN not in means else means[MATCHED_CLEAN] - base
        cells = []
        for s in strategies:
            if s not in means:
                cells.append("")
            elif base is None or s == "federated_coreset":
                cells.append(f"{means[s]:.4f}")
            elif s == MATCHED_CLEAN or not loss or loss <= 0:
                cells.append(f"{means[s]:.4f} ({means[s] - base:+.4f})")
            else:
                recovered = (means[s] - base) / loss
                cells.append(f"{means[s]:.4f} ({means[s] - base:+.4f}, {recovered:.0%} of the loss)")
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
