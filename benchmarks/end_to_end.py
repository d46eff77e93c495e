"""Wall time (per stage) and peak memory of the Kedro pipelines, on the embedded default or at AutoVI scale.

Every pipeline runs through a KedroSession in a throwaway copy of the project (the repository's
data/ is untouched), in its own child process so that its peak RSS is its own; the per-node wall
times recorded by NodeTimingHook are grouped into stages.

``--scale default``: ``kedro run --pipeline federated`` on the embedded synthetic dataset, as a
fresh checkout runs it.

``--scale autovi``: a synthetic dataset with AutoVI's shapes, written as PNGs in AutoVI layout:
6 categories (engine_wiring, pipe_clip, pipe_staple at 400x400; tank_screw, underbody_pipes,
underbody_screw at 1000x750), 300 training and 150 test images each (``--fraction`` scales
both), one defect type with ground-truth masks. Smooth random shading plus noise: the pixels
only have to cost what real ones cost to decode and embed. It runs the ``centralized`` and the
``federated`` pipelines (IID partition over ``--clients`` clients, no comparison variants) with
``wide_resnet50_2``. Its ImageNet weights are not on the build machines: pass
``--random-init-timing-only`` to time a randomly initialised network instead (written to a
weight file that the project then loads like any other; features and metrics of such a run
mean nothing, only the times do). Without that flag and without the weight file the run stops.

    python benchmarks/end_to_end.py [--pipeline federated] [--params "coreset.ratio=0.05"]
    python benchmarks/end_to_end.py --scale autovi --fraction 0.02 --random-init-timing-only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fedpatchcore.core.data.autovi import AUTOVI_IMAGE_SIZES

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

AUTOVI_TRAIN, AUTOVI_TEST = 300, 150


def stage_of(node_name: str) -> str:
    short = node_name.rsplit(".", 1)[-1]
    if short.startswith("aggregate_round") or "select_upload_round" in short:
        return "aggregate"
    return STAGES.get(short, "report")


# ----------------------------------------------------------------------------------------------
# the AutoVI-shaped dataset
# ----------------------------------------------------------------------------------------------
def _shaded_image(rng, width: int, height: int):
    """uint8 RGB: bilinearly upsampled coarse random colours (smooth parts) plus pixel noise."""
    import numpy as np
    from PIL import Image

    coarse = rng.integers(40, 220, (6, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    noise = rng.normal(0.0, 4.0, smooth.shape)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def write_autovi_like(root: Path, fraction: float, seed: int = 0, categories=None) -> dict[str, int]:
    """AutoVI-layout PNGs of AutoVI's sizes; returns {category: images written}."""
    import numpy as np
    from PIL import Image

    n_train = max(2, round(AUTOVI_TRAIN * fraction))
    n_test = max(2, round(AUTOVI_TEST * fraction))
    written = {}
    for c_index, (category, (width, height)) in enumerate(AUTOVI_IMAGE_SIZES.items()):
        if categories and category not in categories:
            continue
        rng = np.random.default_rng([seed, c_index])
        folder = root / category
        for split, count in (("train/good", n_train), ("test/good", n_test - n_test // 2)):
            (folder / split).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(_shaded_image(rng, width, height)).save(
                    folder / split / f"{i:04d}.png", compress_level=1
                )
        (folder / "test" / "missing").mkdir(parents=True, exist_ok=True)
        for i in range(n_test // 2):
            image = _shaded_image(rng, width, height)
            mask = np.zeros((height, width), dtype=np.uint8)
            x0, y0 = int(rng.integers(0, width - width // 8)), int(rng.integers(0, height - height // 8))
            mask[y0 : y0 + height // 10, x0 : x0 + width // 10] = 255
            image[mask > 0] = (20, 20, 20)
            Image.fromarray(image).save(folder / "test" / "missing" / f"{i:04d}.png", compress_level=1)
            (folder / "ground_truth" / "missing" / f"{i:04d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(folder / "ground_truth" / "missing" / f"{i:04d}" / "0000.png")
        (folder / "defects_config.json").write_text(
            json.dumps(
                [{"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 1.0,
                  "relative_saturation": True}]
            )
        )  # fmt: skip
        written[category] = n_train + n_test
    return written


def random_wrn50_weights(path: Path, seed: int = 0) -> Path:
    """A randomly initialised wide_resnet50_2 state dict (benchmark timing only)."""
    import torch
    from torchvision.models import wide_resnet50_2

    torch.manual_seed(seed)
    torch.save(wide_resnet50_2(weights=None).state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------------
# one pipeline run (child process)
# ----------------------------------------------------------------------------------------------
def run_child(pipeline: str, params: str, data_root: str | None, result_path: Path) -> None:
    """Run ``pipeline`` in a throwaway project copy; write stage times, wall and peak RSS as JSON."""
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
        runtime_params = _split_params(None, None, params) if params else {}
        start = time.perf_counter()
        with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
            session.run(pipeline_names=[pipeline])
        wall = time.perf_counter() - start
        timing_hook = next(hook for hook in settings.HOOKS if isinstance(hook, NodeTimingHook))
    per_stage: dict[str, float] = defaultdict(float)
    for name, seconds in timing_hook.timings.items():
        per_stage[stage_of(name)] += seconds
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result_path.write_text(
        json.dumps({"pipeline": pipeline, "wall": wall, "stages": per_stage, "nodes": len(timing_hook.timings),
                    "peak_rss_gib": peak_kib / 2**20})
    )  # fmt: skip


def run_pipeline(pipeline: str, params: str, data_root: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedpatchcore_e2e_result_") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", pipeline, "--params", params, "--result", str(result)]
        subprocess.run(command, check=True, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"})
        return json.loads(result.read_text())


def print_result(result: dict, label: str) -> None:
    print(f"pipeline={result['pipeline']} ({label}) nodes={result['nodes']} cpus={os.cpu_count()}")
    print(f"{'stage':<18}{'seconds':>10}")
    for stage, seconds in sorted(result["stages"].items(), key=lambda item: -item[1]):
        print(f"{stage:<18}{seconds:>10.1f}")
    print(f"{'total (nodes)':<18}{sum(result['stages'].values()):>10.1f}")
    print(f"wall_time_s={result['wall']:.1f} peak_rss_gib={result['peak_rss_gib']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=["default", "autovi"], default="default")
    parser.add_argument("--pipeline", default=None, help="default scale: the pipeline (default federated)")
    parser.add_argument("--params", default="", help='Kedro-style "a.b=1,c=x" overrides, added last')
    parser.add_argument("--fraction", type=float, default=1.0, help="autovi: share of AutoVI's image counts")
    parser.add_argument("--categories", default="", help="autovi: comma list of categories (default: all 6)")
    parser.add_argument("--clients", type=int, default=2, help="autovi: IID clients of the federated run")
    parser.add_argument("--device", default="auto", help="autovi: backbone/coreset device")
    parser.add_argument(
        "--keep-data", type=Path, default=None, help="autovi: write the dataset here and keep it"
    )
    parser.add_argument(
        "--random-init-timing-only",
        action="store_true",
        help="autovi: time wide_resnet50_2 with random weights when its weight file is absent",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

    if args.child:
        run_child(args.child, args.params, None, args.result)
        return

    if args.scale == "default":
        pipeline = args.pipeline or "federated"
        print_result(run_pipeline(pipeline, args.params, None), "embedded default")
        return

    from fedpatchcore.core.features.backbones import BackboneWeightsMissing, load_backbone

    with tempfile.TemporaryDirectory(prefix="fedpatchcore_autovi_") as tmp:
        tmp = Path(tmp)
        weights = ""
        try:
            load_backbone("wide_resnet50_2")
            label = "wide_resnet50_2, ImageNet weights"
        except BackboneWeightsMissing as error:
            if not args.random_init_timing_only:
                sys.exit(
                    f"{error}\n(or pass --random-init-timing-only to time a randomly initialised network)"
                )
            weights = str(random_wrn50_weights(tmp / "wrn50_random_init.pth"))
            label = "wide_resnet50_2, RANDOM-INIT weights: timings only"
        root = args.keep_data or tmp / "autovi_like"
        categories = [c for c in args.categories.split(",") if c]
        started = time.perf_counter()
        written = write_autovi_like(root, args.fraction, categories=categories)
        print(
            f"dataset: {sum(written.values())} PNGs in AutoVI layout ({args.fraction:g} of 300 train + 150 test "
            f"per category; {', '.join(f'{c} {AUTOVI_IMAGE_SIZES[c][0]}x{AUTOVI_IMAGE_SIZES[c][1]}' for c in written)}) "
            f"written in {time.perf_counter() - started:.0f}s; backbone: {label}"
        )
        base = [
            "dataset.format=autovi",
            f"dataset.root={root}",
            "backbone.name=wide_resnet50_2",
            f"backbone.device={args.device}",
            f"coreset.device={args.device}",
            "federation.partition=iid",
            f"federation.num_clients={args.clients}",
            "comparison.enabled=false",
        ]
        if weights:
            base.append(f"backbone.weights_path={weights}")
        params = ",".join(base + ([args.params] if args.params else []))
        for pipeline in ("centralized", "federated"):
            print_result(run_pipeline(pipeline, params, str(root)), label)


if __name__ == "__main__":
    main()
