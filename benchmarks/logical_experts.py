"""Detection quality of the logical experts beside PatchCore (issue 23), in plain Python.

Per seed and category of the embedded synthetic dataset (generated into a temporary folder):
validation split of the training images (``--validation-fraction``) -> bank from the rest
(extraction -> k-center coreset, ratio 0.1) -> experts fitted from the site statistics (one
site) -> fusion rule chosen on the validation images and their pseudo-anomalies -> test image
AUROC of PatchCore (``texture``), every expert alone, the best combination (``fused``) and the
chosen rule (``selected``), over the logical and the structural defect types separately. The
test split is read only after every choice is made. Options compare settings of the position
expert (``--grids``, ``--shifts``) and the projection (``--projection-dims``) on the same bank.

    python benchmarks/logical_experts.py [--seeds 0 1 2] [--categories assembly,parts_tray]
        [--n-test-good 24 --n-test-per-defect 12] [--grids 16 --shifts 0 1] [--shots all]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.coreset.kcenter import coreset_size
from fedpatchcore.core.coreset.streaming import select_coreset_streaming
from fedpatchcore.core.data.index import few_shot_training, index_dataset
from fedpatchcore.core.data.loading import load_image
from fedpatchcore.core.data.synthetic import LOGICAL_DEFECTS, SYNTHETIC_CATEGORIES, generate_synthetic_dataset
from fedpatchcore.core.data.types import TEST
from fedpatchcore.core.evaluation.metrics import image_auroc
from fedpatchcore.core.experts import fitting
from fedpatchcore.core.experts.fusion import RULES
from fedpatchcore.core.experts.model import ExpertSettings
from fedpatchcore.core.features.backbones import stage_channels
from fedpatchcore.core.features.extraction import extract_patch_features
from fedpatchcore.core.features.setting import EmbedderCache, Setting
from fedpatchcore.core.scoring.patch_scores import score_images
from fedpatchcore.core.tuning.fusion import choose_fusion
from fedpatchcore.core.tuning.pseudo_anomalies import KNOWN_PSEUDO_ANOMALY_KINDS
from fedpatchcore.core.tuning.split import build_validation_images, split_validation
from fedpatchcore.core.tuning.tuner import embed_images

ROWS = ("texture", "global", "position", "composition", "fused", "selected")


def _auroc(scores: np.ndarray, defects: np.ndarray, kind: set[str] | None) -> float | None:
    good = defects == "good"
    chosen = ~good if kind is None else np.isin(defects, sorted(kind))
    if not chosen.any():
        return None
    keep = good | chosen
    return float(image_auroc(scores[keep], chosen[keep].astype(int)))


def fit_experts(features, bank: np.ndarray, category: str, shallow: int, settings: ExpertSettings):
    site = {category: fitting.SiteFeatures(features.files[category], features.grid[category], shallow)}
    fit = fitting.start_fit([fitting.site_statistics(site, settings)], {category: bank}, settings)
    while fit.rounds_left > 1:
        fit = fitting.server_round(fit, [fitting.site_round(site, fit.broadcast(), settings)])
    return fitting.finish(fit, [fitting.site_round(site, fit.broadcast(), settings)])[category]


def run(args) -> pd.DataFrame:
    torch.set_num_threads(args.threads)
    embedder = EmbedderCache("cpu").get(Setting())
    shallow = stage_channels("efficientnet_lite0")[0]
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "synthetic"
            generate_synthetic_dataset(
                root, seed=seed, n_test_good=args.n_test_good, n_test_per_defect=args.n_test_per_defect, categories=args.categories
            )
            samples, infos, _ = index_dataset("synthetic", root, "all")
            for category in args.categories:
                started = time.perf_counter()
                info = infos[category]
                split = split_validation([s for s in samples if s.category == category], args.validation_fraction, seed)
                train = few_shot_training(split.train, None if args.shots == "all" else int(args.shots), seed)
                features = extract_patch_features(
                    train, {category: info}, embedder, Path(folder) / f"features_{category}", batch_size=8,
                    projection_dim=128, seed=seed, num_workers=0,
                )
                file = features.files[category]
                bank = np.asarray(file.gather(select_coreset_streaming(file, coreset_size(file.n_rows, 0.1, 20000), seed=seed)), np.float32)
                index = build_index(bank)
                validation = build_validation_images(split.validation, info.image_size, seed, KNOWN_PSEUDO_ANOMALY_KINDS, 7)
                val_features = embed_images(embedder, validation.images, 8)
                _, val_texture = score_images(index, val_features, info.image_size, sigma=4.0)
                test = [s for s in samples if s.split == TEST and s.category == category]
                test_features = embed_images(embedder, np.stack([load_image(s.image_path, info.image_size) for s in test]), 8)
                _, test_texture = score_images(index, test_features, info.image_size, sigma=4.0)
                defects = np.asarray([s.defect_type for s in test], dtype=object)
                kinds = ["good"] * len(validation.good) + list(validation.kinds)
                for projection_dim, grid, shift in itertools.product(args.projection_dims, args.grids, args.shifts):
                    settings = ExpertSettings(projection_dim=projection_dim, grid=grid, shift=shift, seed=seed)
                    experts = fit_experts(features, bank, category, shallow, settings)
                    val = experts.score(val_features)
                    choice = choose_fusion({"texture": val_texture, **val.scores}, val.composition, validation.labels, kinds, RULES, args.min_gain)
                    out = experts.score(test_features)
                    raw = {"texture": test_texture, **out.scores, "composition": out.composition[choice.rule.composition_k]}
                    for name in ROWS:
                        scores = choice.rule_for(name).image_scores(raw)
                        rows.append(
                            {
                                "seed": seed, "category": category, "projection_dim": projection_dim, "grid": grid,
                                "shift": shift, "expert": name, "chosen": choice.rule.name,
                                "image_auroc": _auroc(scores, defects, None),
                                "logical": _auroc(scores, defects, LOGICAL_DEFECTS),
                                "structural": _auroc(scores, defects, set(defects) - LOGICAL_DEFECTS - {"good"}),
                            }
                        )
                logging.info("seed %d %s: %.1f s", seed, category, time.perf_counter() - started)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--categories", default=",".join(SYNTHETIC_CATEGORIES))
    parser.add_argument("--n-test-good", type=int, default=16)
    parser.add_argument("--n-test-per-defect", type=int, default=6)
    parser.add_argument("--validation-fraction", type=float, default=0.3)
    parser.add_argument("--shots", default="all")
    parser.add_argument("--grids", type=int, nargs="+", default=[16])
    parser.add_argument("--shifts", type=int, nargs="+", default=[0])
    parser.add_argument("--projection-dims", type=int, nargs="+", default=[32])
    parser.add_argument("--min-gain", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the rows to this CSV")
    args = parser.parse_args()
    args.categories = [c for c in args.categories.split(",") if c]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table = run(args)
    if args.out:
        table.to_csv(args.out, index=False)
    settings = ["projection_dim", "grid", "shift"]
    per_seed = table.pivot_table(index=[*settings, "category", "expert"], columns="seed", values=["logical", "structural"])
    pd.set_option("display.width", 200)
    print(per_seed.round(3).to_string())
    print("\nchosen rule per seed:")
    print(table.drop_duplicates([*settings, "seed", "category"]).pivot_table(index=[*settings, "category"], columns="seed", values="chosen", aggfunc="first").to_string())


if __name__ == "__main__":
    main()
