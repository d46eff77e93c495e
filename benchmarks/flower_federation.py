"""Wall time and bytes on the wire of the federated training on the embedded default, three ways.

* ``inprocess``: today's Kedro lanes (``federation.engine: inprocess``), every client in one run;
* ``simulation``: ``kedro run --params federation.engine=flower`` (Flower's simulation engine on
  Ray inside one Kedro node, 2 CPUs, 1 per client);
* ``deployment``: a SuperLink and one SuperNode per client as separate processes on loopback,
  TLS and SuperNode authentication on (``scripts/flower_loopback.py``), ``flwr run``; the
  SuperNodes reach the SuperLink through a byte-counting relay (TLS records, heartbeats,
  the app bundle and all).

All three run in one throwaway copy of the project (the repository's data/ is untouched), on
the same partition, with ``comparison.enabled: false`` (the main federated variant only), and
each is scored with ``kedro run --pipeline evaluate``: the published metrics must be equal.

    python benchmarks/flower_federation.py [--modes inprocess,simulation,deployment]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

LOCAL = {"comparison": {"enabled": False}}


def _session_run(project: Path, runtime_params: dict, **run_args) -> tuple[float, dict[str, float]]:
    from kedro.framework.project import settings
    from kedro.framework.session import KedroSession

    from fedpatchcore.hooks import NodeTimingHook

    started = time.perf_counter()
    with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
        session.run(**run_args)
    wall = time.perf_counter() - started
    hook = next(h for h in settings.HOOKS if isinstance(h, NodeTimingHook))
    return wall, dict(hook.timings)


def _load(project: Path, name: str):
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project) as session:
        return session.load_context().catalog.load(name)


def _training_seconds(timings: dict[str, float]) -> float:
    """Node time of the federated training: client lanes + server rounds (or the Flower node)."""
    return sum(
        seconds
        for name, seconds in timings.items()
        if name.startswith("federated.client_") or ".aggregate_round_" in name or name.endswith("run_flower_federation")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="inprocess,simulation,deployment")
    args = parser.parse_args()
    modes = args.modes.split(",")
    for key, value in {"KEDRO_DISABLE_TELEMETRY": "true", "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(key, value)

    from kedro.framework.startup import bootstrap_project

    results: dict[str, dict] = {}
    metrics: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fedpatchcore_flower_") as workdir:
        project = Path(workdir) / "project"
        project.mkdir()
        shutil.copy(REPO / "pyproject.toml", project)
        shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
        (project / "conf" / "local").mkdir()
        (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(LOCAL))
        (project / "src").mkdir()
        os.chdir(project)
        bootstrap_project(project)
        # Ingest and partition once, outside every measurement.
        _session_run(project, {}, pipeline_names=["federated"], to_nodes=["federated.partition_clients"])
        reports = {}
        for mode, engine in (("inprocess", "inprocess"), ("simulation", "flower")):
            if mode not in modes:
                continue
            wall, timings = _session_run(
                project,
                {"federation": {"engine": engine}},
                pipeline_names=["federated"],
                from_nodes=["federated.partition_clients"],
            )
            report = _load(project, "federated.round_1_report")
            reports[mode] = report
            metrics[mode] = _load(project, "metrics_federated")
            entry = {
                "kedro_run_s": round(wall, 1),
                "training_s": round(_training_seconds(timings), 1),
                "uploaded_bytes": report["uploaded_bytes"],
            }
            if engine == "flower":
                traffic = _load(project, "federated.flower_traffic")
                entry["flower_messages_bytes"] = traffic["sent_bytes"] + traffic["received_bytes"]
            results[mode] = entry

        if "deployment" in modes:
            sys.path.insert(0, str(REPO))  # the loopback tooling lives in the checkout's scripts/
            from fedpatchcore.flower.site import make_site_folder
            from fedpatchcore.structure import federated_variants
            from scripts.flower_loopback import LoopbackFederation

            parameters = _load_parameters(project)
            (variant,) = federated_variants(parameters)
            sites = {
                cid: make_site_folder(
                    _load(project, f"federated.client_{cid}.training_images"),
                    Path(workdir) / "sites" / cid,
                    project / "data" / "01_raw" / "synthetic",
                )
                for cid in variant.client_ids
            }
            started = time.perf_counter()
            federation = LoopbackFederation(Path(workdir) / "loopback", project, sites, count_bytes=True)
            try:
                federation.start()
                startup = time.perf_counter() - started
                federation.relay.reset()  # count the run only (not the SuperNodes' registration)
                started = time.perf_counter()
                federation.run(timeout_s=1200)
                run_s = time.perf_counter() - started
                traffic = _load(project, "federated.flower_traffic")
                results["deployment"] = {
                    "startup_s": round(startup, 1),
                    "flwr_run_s": round(run_s, 1),
                    "rounds_s": round(sum(r["seconds"] for r in traffic["rounds"]), 1),
                    "uploaded_bytes": _load(project, "federated.round_1_report")["uploaded_bytes"],
                    "flower_messages_bytes": traffic["sent_bytes"] + traffic["received_bytes"],
                    "wire_bytes_up": federation.relay.upstream,
                    "wire_bytes_down": federation.relay.downstream,
                }
            finally:
                federation.stop()
            _session_run(project, {}, pipeline_names=["evaluate"])
            metrics["deployment"] = _load(project, "metrics_federated")

    print(json.dumps(results, indent=1))
    reference = next(iter(metrics.values()), None)
    for mode, published in metrics.items():
        same = published == reference
        quality = published["mean"] == reference["mean"] and published["categories"] == reference["categories"]
        print(f"{mode}: metrics_federated equal to {next(iter(metrics))}: {same} (quality metrics: {quality}); "
              f"mean image_auroc={published['mean'].get('image_auroc')}")


def _load_parameters(project: Path) -> dict:
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project) as session:
        return session.load_context().config_loader["parameters"]


if __name__ == "__main__":
    main()
