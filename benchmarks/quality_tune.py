"""Detection quality of scoring options, backbones and the per-category tuner (issue 14).

Centralized PatchCore in plain Python on the embedded synthetic dataset (generated into a
temporary folder): extract -> coreset (ratio 0.1) -> exact index -> score -> image AUROC per
category, for the default and each option; then the tuner (validation split of the training
images + pseudo-anomalies; the test split is not read until every choice is made) and the
test AUROC of its per-category choice; then thresholds calibrated on good validation images
and the false-alarm rate they give on the test split's good images.

    python benchmarks/quality_tune.py [--out DIR] [--threads 2] [--min-gain 0.0] [--tune-seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
from fedpatchcore.core.data.types import TEST, TRAIN
from fedpatchcore.core.evaluation.metrics import evaluate_category
from fedpatchcore.core.features.setting import EmbedderCache, Setting
from fedpatchcore.core.scoring.predict import (
    build_category_models,
    calibrate_from_validation,
    score_samples,
)
from fedpatchcore.core.scoring.thresholds import CALIBRATION_METHODS, false_alarm_rate
from fedpatchcore.core.tuning.split import split_validation
from fedpatchcore.core.tuning.tuner import BankConfig, build_category_bank, candidate_grid, tune

DATASET = {"image_size": (128, 128), "n_train": 24, "n_test_good": 16, "n_test_per_defect": 6}
DEFAULT = Setting(image_size=(128, 128))  # efficientnet_lite0 at the dataset's size, max of the map


def markdown(frame: pd.DataFrame, index: bool = True) -> str:
    """A markdown table (pandas' to_markdown needs tabulate, which the project does not install)."""
    frame = frame.reset_index() if index else frame
    cells = [
        [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def auroc_on_test_split(
    samples, infos, settings, config, embedders, scratch
) -> tuple[dict[str, float], float]:
    """Test image AUROC per category; ``settings``: one Setting or {category: Setting}. Bank = all train images."""
    started = time.perf_counter()
    result = {}
    for category, info in sorted(infos.items()):
        setting = settings if isinstance(settings, Setting) else settings[category]
        train = [s for s in samples if s.category == category and s.split == TRAIN]
        test = [s for s in samples if s.category == category and s.split == TEST]
        size = setting.resolved_size(info)
        sized = info.__class__(info.name, size, info.has_pixel_ground_truth, info.defects)
        bank = build_category_bank(train, sized, embedders.get(setting), config, scratch)
        model = build_category_models({category: bank}, {category: sized}, setting, embedders=embedders)[
            category
        ]
        kept, scores, _ = score_samples(model, test, batch_size=config.batch_size)
        metrics = evaluate_category(scores, [s.label for s in kept], [s.defect_type for s in kept])
        result[category] = float(metrics["image_auroc"])
    return result, time.perf_counter() - started


def false_alarms(root: Path, config, embedders, scratch, rate: float, split_seeds=(0, 1, 2)) -> pd.DataFrame:
    """Thresholds from good validation images; false-alarm rate and recall on the test split.

    A larger set than the AUROC runs (100 training images per category, half of them for
    validation; 200 good test images, so a 5 % rate is measured to about +-1.5 %), repeated
    over several validation splits.
    """
    generate_synthetic_dataset(
        root, seed=2, image_size=(128, 128), n_train=100, n_test_good=200, n_test_per_defect=10
    )
    samples, infos, _ = index_dataset("synthetic", root, "all")
    rows = []
    for split_seed in split_seeds:
        split = split_validation(samples, fraction=0.5, seed=split_seed)
        banks = {
            category: build_category_bank(train, infos[category], embedders.get(DEFAULT), config, scratch)
            for category, (train, _) in split.by_category().items()
        }
        models = build_category_models(banks, infos, DEFAULT, embedders=embedders)
        calibrations = {
            m: calibrate_from_validation(models, split.validation, rate, m) for m in CALIBRATION_METHODS
        }
        for category, model in models.items():  # only now is the test split read
            test = [s for s in samples if s.category == category and s.split == TEST]
            kept, scores, _ = score_samples(model, test)
            labels = np.array([s.label for s in kept])
            for method, by_category in calibrations.items():
                cal = by_category[category]
                rows.append(
                    {
                        "split_seed": split_seed,
                        "method": method,
                        "category": category,
                        "n_val_good": cal.n_good,
                        "threshold": round(cal.threshold, 3),
                        "test_far": round(false_alarm_rate(scores[labels == 0], cal.threshold), 4),
                        "test_recall": round(float((scores[labels == 1] > cal.threshold).mean()), 4),
                        "n_test_good": int((labels == 0).sum()),
                    }
                )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=None, help="folder for tune.csv, tuned parameters and tables")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-gain", type=float, default=0.0)
    parser.add_argument("--per-image", type=int, default=4, help="pseudo-anomalies per validation image")
    parser.add_argument("--far", type=float, default=0.05, help="target false-alarm rate")
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[0], help="validation splits to tune on")
    parser.add_argument("--skip-far", action="store_true", help="skip the false-alarm measurement")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="quality_tune_") as work:
        work = Path(work)
        out = Path(args.out) if args.out else work / "out"
        out.mkdir(parents=True, exist_ok=True)
        generate_synthetic_dataset(work / "synthetic", seed=0, **DATASET)
        samples, infos, _ = index_dataset("synthetic", work / "synthetic", "all")
        config = BankConfig(coreset_ratio=0.1, batch_size=8, seed=0)
        embedders = EmbedderCache()

        # 1. centralized runs, one setting for all categories
        runs = {
            "default (lite0, 128, max)": DEFAULT,
            "reweight (b=9)": Setting(image_size=(128, 128), reweight=True),
            "topk_mean (k=3)": Setting(image_size=(128, 128), image_score="topk_mean", topk=3),
            "topk_mean (k=10)": Setting(image_size=(128, 128), image_score="topk_mean", topk=10),
            "lite1 @128": Setting("efficientnet_lite1", image_size=(128, 128)),
            "lite2 @128": Setting("efficientnet_lite2", image_size=(128, 128)),
            "lite1 @240 (its default size)": Setting("efficientnet_lite1"),
            "lite2 @260 (its default size)": Setting("efficientnet_lite2"),
        }
        table, seconds = {}, {}
        for name, setting in runs.items():
            table[name], seconds[name] = auroc_on_test_split(samples, infos, setting, config, embedders, work)
            print(
                f"{name}: mean {np.mean(list(table[name].values())):.4f} ({seconds[name]:.1f} s)", flush=True
            )

        # 2. the tuner: validation split of the training images only
        grid = candidate_grid(
            backbones=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
            image_sizes=[(128, 128), (192, 192)],
            scorings=[
                {"image_score": "max"},
                {"image_score": "max", "reweight": True},
                {"image_score": "topk_mean", "topk": 3},
            ],
            default=DEFAULT,
        )
        results, tune_seconds = {}, {}
        for split_seed in args.tune_seeds:
            # the validation split and the pseudo-anomalies follow the seed; banks for the test stay seed 0
            started = time.perf_counter()
            results[split_seed] = tune(
                [s for s in samples if s.split == TRAIN],  # the benchmark hands over training images only
                infos,
                grid,
                replace(config, seed=split_seed),
                default=DEFAULT,
                validation_fraction=0.2,
                per_image=args.per_image,
                min_gain=args.min_gain,
                scratch_dir=work,
            )
            tune_seconds[split_seed] = time.perf_counter() - started
            result = results[split_seed]
            result.table.to_csv(out / f"tune_seed{split_seed}.csv", index=False)
            (out / f"parameters_tuned_seed{split_seed}.yml").write_text(
                yaml.safe_dump(result.parameters(), sort_keys=False)
            )
            (out / f"tune_report_seed{split_seed}.md").write_text(result.report())
            name = f"tuned (split seed {split_seed}, min_gain {args.min_gain})"
            table[name], seconds[name] = auroc_on_test_split(
                samples, infos, result.chosen, config, embedders, work
            )
            print(f"{name}: mean {np.mean(list(table[name].values())):.4f}", flush=True)

        frame = pd.DataFrame(table)
        frame.loc["mean"] = frame.mean()
        frame.loc["seconds"] = pd.Series(seconds)
        print("\n## Test image AUROC per category (bank: all 24 training images, coreset 0.1)\n")
        print(markdown(frame.T))
        frame.to_csv(out / "test_auroc.csv")
        for split_seed, result in results.items():
            print(
                f"\n## Tune table, split seed {split_seed} ({len(grid)} candidates x {len(infos)} categories, "
                f"{tune_seconds[split_seed]:.0f} s)\n"
            )
            print(
                result.table[["category", "setting", "val_auroc", "chosen", "seconds"]]
                .sort_values(["category", "val_auroc"], ascending=[True, False])
                .pipe(markdown, index=False)
            )
            print()
            print(result.report())

        # 3. thresholds from good validation images -> false alarms on the test split
        if args.skip_far:
            return
        started = time.perf_counter()
        far = false_alarms(work / "synthetic_far", config, embedders, work, args.far)
        far.to_csv(out / "false_alarms.csv", index=False)
        print(
            f"\n## Calibrated at a {args.far:.0%} false-alarm target ({time.perf_counter() - started:.0f} s)\n"
        )
        per_category = far.groupby(["method", "category"])[["test_far", "test_recall"]].mean()
        print(markdown(per_category))
        pooled = far.groupby("method")[["test_far", "test_recall"]].agg(["mean", "min", "max"])
        pooled.columns = ["_".join(c) for c in pooled.columns]
        print(f"\nover categories and {far['split_seed'].nunique()} validation splits:\n" + markdown(pooled))
        print(f"\nload average at end: {os.getloadavg()}; files in {out}")


if __name__ == "__main__":
    main()
