"""Approximate nearest-neighbour search against exact search: time, recall and metrics per category.

For each dataset (``--data default``: the embedded synthetic default; ``--data autovi``: the
AutoVI-shaped PNGs of ``end_to_end.py`` at ``--fraction``) the benchmark runs the pipelines
(``--pipelines``, default centralized and federated) once with exact search in a throwaway
copy of the project, then, per variant and category, embeds the test images once (as the
scoring node does) and searches their patches with every index configuration (``--configs``):

* ``build_s``: building the index over the category's bank;
* ``search_ms_per_image``: the search of one test image's patches, averaged over the category
  (all patches of a category in one call, 65,536 queries per faiss search);
* ``recall_at_1``: the share of test patches whose nearest bank row is the exact one;
* ``image_auroc`` / ``aucspro_0.05`` of the maps made from those distances (the run's
  ``scoring`` block through :class:`PatchScorer`, the node's ``compute_metrics``), and their
  change against exact search (``d_image_auroc``, ``d_aucspro_0.05``).

The last lines say, per configuration, the largest change over every category of every dataset
run and whether it stays within ``--guard`` (0.002): the condition for making it the default.

    python benchmarks/ann_search.py --data default
    python benchmarks/ann_search.py --data autovi --fraction 0.2 --keep-data /tmp/autovi_like_0.2
    python benchmarks/ann_search.py --data default,autovi --fraction 0.2 --out /tmp/ann.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import METRICS, autovi_run_params, prepare_project, table_metrics, write_autovi_like  # noqa: E402

DEFAULT_CONFIGS = (
    "exact;ivf:nprobe=4;ivf:nprobe=16;ivf:nprobe=64;hnsw:ef_search=16;hnsw:ef_search=64;hnsw:ef_search=256"
)


def parse_configs(text: str) -> list[tuple[str, dict]]:
    """``"exact;ivf:nprobe=16;hnsw:m=32,ef_search=64"`` -> [(name, scoring overrides), ...]."""
    configs = []
    for item in [part.strip() for part in text.split(";") if part.strip()]:
        kind, _, settings = item.partition(":")
        values = {}
        for pair in [p for p in settings.split(",") if p]:
            key, _, value = pair.partition("=")
            values[key.strip()] = None if value.strip() == "null" else int(value)
        configs.append((item, {"index": kind, **({kind: values} if values else {})}))
    return configs


def run_pipelines(workdir: Path, pipelines: list[str], params: str):
    """Run ``pipelines`` in a fresh copy of the project under ``workdir``; return its Kedro context."""
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    from kedro.framework.cli.utils import _split_params
    from kedro.framework.session import KedroSession

    project = workdir / "project"
    prepare_project(project)
    runtime_params = _split_params(None, None, params) if params else {}
    for pipeline in pipelines:
        with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
            session.run(pipeline_names=[pipeline])
    with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
        return session.load_context()


def test_features(samples, plan, search) -> tuple[list, np.ndarray]:
    """The category's readable test images and their patch features ``(n, h, w, d)`` float32."""
    from fedpatchcore.core.features.batches import iter_image_batches
    from fedpatchcore.core.features.extraction import make_embedder

    embedder = make_embedder(plan.backbone, plan.extraction)
    kept, features = [], []
    for batch in iter_image_batches(samples, plan.info.image_size, search.batch_size, [], search.num_workers):
        features.append(embedder.embed(batch.images))
        kept.extend(batch.samples)
    return kept, np.concatenate(features)


def compare_variant(context, variant: str, configs, dataset: str) -> list[dict]:
    """One row per category and configuration for ``variant``'s persisted bank."""
    from fedpatchcore.core.banks import CategoryBanks
    from fedpatchcore.core.banks.knn import IndexSpec, nearest_neighbours
    from fedpatchcore.core.data.types import (
        TEST,
        category_info_from_dict,
        frame_to_samples,
        group_by_category,
    )
    from fedpatchcore.core.scoring.category import CategoryPlan, SearchBatches
    from fedpatchcore.core.scoring.patch_scores import PatchScorer, anomaly_maps
    from fedpatchcore.pipelines.evaluation.nodes import compute_metrics

    params = context.params
    blocks = (params.get("variants") or {}).get(variant) or params
    backbone, extraction, scoring = blocks["backbone"], blocks["extraction"], blocks["scoring"]
    catalog = context.catalog
    banks = CategoryBanks.from_arrays(catalog.load(f"{variant}.memory_bank")).banks
    evaluation_index = catalog.load("evaluation_index")
    category_info = catalog.load("category_info")
    by_category = group_by_category(s for s in frame_to_samples(evaluation_index) if s.split == TEST)
    search = SearchBatches.from_params(scoring, extraction)
    rows = []
    for category, samples in by_category.items():
        info = category_info_from_dict(category_info[category])
        plan = CategoryPlan.from_blocks(info, backbone, extraction, scoring)
        kept, features = test_features(samples, plan, search)
        queries = features.reshape(-1, features.shape[-1])
        exact_ids = None
        for name, overrides in configs:
            spec = IndexSpec.from_params({**scoring, **overrides}, int(params["seed"]))
            started = time.perf_counter()
            index = spec.build(banks[category])
            built = time.perf_counter() - started
            started = time.perf_counter()
            dist, ids = nearest_neighbours(index, queries, k=1)
            searched = time.perf_counter() - started
            if exact_ids is None:
                if spec.kind != "exact":
                    raise SystemExit("the first configuration must be 'exact' (the reference)")
                exact_ids = ids[:, 0]
            patch_scores = dist[:, 0].reshape(features.shape[:3])
            scorer = PatchScorer.from_params(scoring)
            maps = anomaly_maps(patch_scores, info.image_size, sigma=scorer.sigma)
            scores = maps.reshape(len(maps), -1).max(axis=1)
            entry = {"keys": [s.key for s in kept], "maps": maps}
            frame = pd.DataFrame(
                {"key": [s.key for s in kept], "label": [s.label for s in kept], "image_score": scores}
            )
            metrics = compute_metrics({category: entry}, frame, evaluation_index, category_info, [])["categories"][category]
            rows.append({
                "dataset": dataset, "variant": variant, "category": category, "config": name,
                "bank_rows": len(banks[category]), "test_images": len(kept), "patches": len(queries),
                "build_s": built, "search_ms_per_image": 1000 * searched / len(kept),
                "recall_at_1": float((ids[:, 0] == exact_ids).mean()),
                **table_metrics(metrics),
            })  # fmt: skip
    return rows


def with_deltas(table: pd.DataFrame) -> pd.DataFrame:
    reference = table[table["config"] == table["config"].iloc[0]].set_index(["dataset", "variant", "category"])
    for metric in METRICS:
        base = table.set_index(["dataset", "variant", "category"]).index.map(reference[metric])
        table[f"d_{metric}"] = table[metric].to_numpy(dtype=float) - np.asarray(base, dtype=float)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="default,autovi", help="comma list: default, autovi")
    parser.add_argument("--pipelines", default="centralized,federated", help="pipelines run (once each)")
    parser.add_argument(
        "--variants", default="", help="variants whose banks are compared (default: the --pipelines names)"
    )
    parser.add_argument("--fraction", type=float, default=0.2, help="autovi: share of AutoVI's image counts")
    parser.add_argument("--keep-data", type=Path, default=None, help="autovi: the dataset folder (reused if there)")
    parser.add_argument("--categories", default="", help="autovi: comma list of categories (default: all 6)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="';'-separated index configurations, exact first")
    parser.add_argument("--params", default="", help='Kedro-style "a.b=1,c=x" overrides of every run')
    parser.add_argument("--guard", type=float, default=0.002, help="largest metric change allowed per category")
    parser.add_argument("--out", type=Path, default=None, help="write the table as CSV")
    args = parser.parse_args()
    configs = parse_configs(args.configs)
    pipelines = [p for p in args.pipelines.split(",") if p]
    variants = [v for v in args.variants.split(",") if v] or pipelines
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedpatchcore_ann_") as tmp:
        for dataset in [d for d in args.data.split(",") if d]:
            workdir = Path(tmp) / dataset
            params = args.params
            if dataset == "autovi":
                from fedpatchcore.core.features.backbones import DEFAULT_BACKBONE

                root = args.keep_data or Path(tmp) / "autovi_like"
                write_autovi_like(root, args.fraction, categories=[c for c in args.categories.split(",") if c])
                params = autovi_run_params(root, DEFAULT_BACKBONE, extra=args.params)
            elif dataset != "default":
                raise SystemExit(f"unknown --data {dataset!r}: default or autovi")
            context = run_pipelines(workdir, pipelines, params)
            for variant in variants:
                rows.extend(compare_variant(context, variant, configs, dataset))
    table = with_deltas(pd.DataFrame(rows))
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"\ncpus={os.cpu_count()} load_average={os.getloadavg()[0]:.2f} guard={args.guard}")
    for name, group in table.groupby("config", sort=False):
        worst = float(np.nanmax(np.abs(group[[f"d_{m}" for m in METRICS]].to_numpy(dtype=float))))
        print(
            f"{name:<24} recall@1 min {group['recall_at_1'].min():.4f}  search {group['search_ms_per_image'].mean():8.1f} "
            f"ms/image (mean)  largest |change| {worst:.4f}  {'within' if worst <= args.guard else 'OUTSIDE'} the guard"
        )


if __name__ == "__main__":
    main()
