"""Wall time of `kedro run --pipeline federated` on the embedded default, per stage.

Runs the pipeline through a KedroSession in a throwaway copy of the project (so the repository's
data/ is untouched and the synthetic dataset is generated as on a fresh checkout), then groups
the per-node wall times recorded by NodeTimingHook into stages.

    python benchmarks/end_to_end.py [--pipeline federated] [--params "coreset.ratio=0.05"]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Stage of a node, from the last part of its (namespaced) name.
STAGES = {
    "prepare_raw_dataset": "ingest",
    "index_dataset": "ingest",
    "partition_clients": "partition",
    "hold_all_training_images": "partition",
    "extract_features": "extract features",
    "select_coreset": "coreset",
    "build_faiss_index": "index",
    "score_test_images": "score",
    "compute_metrics": "metrics",
}


def stage_of(node_name: str) -> str:
    short = node_name.rsplit(".", 1)[-1]
    if short.startswith("aggregate_round") or "select_upload_round" in short:
        return "aggregate"
    return STAGES.get(short, "report")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", default="federated")
    parser.add_argument("--params", default="", help='Kedro-style "a.b=1,c=x" overrides')
    args = parser.parse_args()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

    from kedro.framework.cli.utils import _split_params
    from kedro.framework.project import settings
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from fedpatchcore.hooks import NodeTimingHook

    with tempfile.TemporaryDirectory(prefix="fedpatchcore_e2e_") as workdir:
        project = Path(workdir)
        shutil.copy(REPO / "pyproject.toml", project)
        shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
        (project / "conf" / "local").mkdir()
        # bootstrap_project wants a source folder; the package itself is imported from the install.
        (project / "src").mkdir()
        os.chdir(project)
        bootstrap_project(project)
        runtime_params = _split_params(None, None, args.params) if args.params else {}
        start = time.perf_counter()
        with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
            session.run(pipeline_names=[args.pipeline])
        wall = time.perf_counter() - start
        timing_hook = next(hook for hook in settings.HOOKS if isinstance(hook, NodeTimingHook))

    per_stage: dict[str, float] = defaultdict(float)
    for name, seconds in timing_hook.timings.items():
        per_stage[stage_of(name)] += seconds
    print(f"pipeline={args.pipeline} nodes={len(timing_hook.timings)} cpus={os.cpu_count()}")
    print(f"{'stage':<18}{'seconds':>10}")
    for stage, seconds in sorted(per_stage.items(), key=lambda item: -item[1]):
        print(f"{stage:<18}{seconds:>10.1f}")
    print(f"{'total (nodes)':<18}{sum(per_stage.values()):>10.1f}")
    print(f"wall_time_s={wall:.1f}")


if __name__ == "__main__":
    main()
