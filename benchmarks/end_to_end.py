"""Wall time (per stage) and peak memory of the Kedro pipelines, on the embedded default or at AutoVI scale.

Every pipeline runs through a KedroSession in a throwaway copy of the project (the repository's
data/ is untouched), in its own child process so that its peak RSS is its own; the per-node wall
times recorded by NodeTimingHook are grouped into stages.

``--scale default``: ``kedro run --pipeline federated`` on the embedded synthetic dataset, as a
fresh checkout runs it.

``--scale autovi``: a synthetic dataset with AutoVI's shapes, written as PNGs in AutoVI layout:
6 categories (engine_wiring, pipe_clip, pipe_staple at 400x400; tank_screw, underbody_pipes,
underbody_screw at 1000x750), 300 training and 150 test images each (``--fraction`` scales
both), one defect type ("missing": a dark rectangle) with ground-truth masks. Smooth random
shading plus noise: the pixels cost what real ones cost to decode and embed, and a pretrained
network sees the defect, so the metrics printed per category (image AUC-ROC, AUC-sPRO@0.05)
mean something. It runs the ``centralized`` and the ``federated`` pipelines (IID partition over
``--clients`` clients, no comparison variants) with ``--backbone`` (default: the project's
default, the pretrained ``efficientnet_lite0``). The ImageNet weights of ``wide_resnet50_2``
are not on the build machines: pass ``--random-init-timing-only`` to time a randomly
initialised network instead (written to a weight file that the project then loads like any
other; features and metrics of such a run mean nothing, only the times do). Without that flag
and without the weight file the run stops.

``--code REV`` runs the pipelines with the project code and conf of a git revision (exported
with ``git archive`` into a temporary folder; the harness is this file), so a "before" and an
"after" run on the same machine in the same hour are two commands, e.g.
``--code 3222ee9`` (main before issue 25) and no ``--code``. ``--keep-data DIR`` writes the dataset once and reuses
it (same fraction and seed) in the next run. ``--json FILE`` saves what is printed.

    python benchmarks/end_to_end.py [--pipeline federated] [--params "coreset.ratio=0.05"]
    python benchmarks/end_to_end.py --scale autovi --fraction 1 --keep-data /tmp/autovi_like
    python benchmarks/end_to_end.py --scale autovi --fraction 0.02 --backbone wide_resnet50_2 --random-init-timing-only
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
    """AutoVI-layout PNGs of AutoVI's sizes; returns {category: images written}.

    A folder that already holds the same dataset (``dataset.json``: fraction, seed, categories)
    is reused as it is.
    """
    import numpy as np
    from PIL import Image

    n_train = max(2, round(AUTOVI_TRAIN * fraction))
    n_test = max(2, round(AUTOVI_TEST * fraction))
    chosen = [c for c in AUTOVI_IMAGE_SIZES if not categories or c in categories]
    recipe = {"fraction": fraction, "seed": seed, "categories": chosen, "train": n_train, "test": n_test}
    marker = root / "dataset.json"
    if marker.is_file() and json.loads(marker.read_text()).get("recipe") == recipe:
        return json.loads(marker.read_text())["written"]
    if root.exists() and any(root.iterdir()):
        sys.exit(f"{root} holds something else than this dataset; pass an empty or new folder")
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
    marker.write_text(json.dumps({"recipe": recipe, "written": written}))
    return written


def autovi_run_params(
    root: Path, backbone: str, device: str = "auto", clients: int = 2, weights: str = "", extra: str = ""
) -> str:
    """Kedro ``--params`` of a run on the AutoVI-shaped dataset at ``root`` (IID clients, no variants)."""
    params = [
        "dataset.format=autovi",
        f"dataset.root={root}",
        f"backbone.name={backbone}",
        f"backbone.device={device}",
        f"coreset.device={device}",
        "federation.partition=iid",
        f"federation.num_clients={clients}",
        "comparison.enabled=false",
    ]
    if weights:
        params.append(f"backbone.weights_path={weights}")
    return ",".join(params + ([extra] if extra else []))


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
#: Where the scoring node's time goes: label -> functions whose cumulative time it is (cProfile
#: names; the same in the code before and after the scoring changes of issue 25).
SCORING_PARTS = {
    "wait for decoded images": ("iter_image_batches",),
    "embed (network)": ("embed",),
    "nearest-neighbour search": ("nearest_neighbours",),
    "upsample (interpolate)": ("interpolate",),
    "blur (gaussian_filter)": ("gaussian_filter",),
    "resize maps": ("resize_maps",),
    "index check / rebuild": ("index_for_bank",),
}


def profile_scoring_node() -> dict:
    """Wrap the evaluation pipeline's ``score_test_images`` node in cProfile; return the live totals.

    Patched before the pipelines are built, so every variant's scoring node runs the wrapper.
    """
    import cProfile
    import functools
    import pstats

    from fedpatchcore.pipelines.evaluation import nodes

    totals: dict = {"calls": 0, "seconds": 0.0, "parts": defaultdict(float)}
    original = nodes.score_test_images

    @functools.wraps(original)
    def profiled(*args, **kwargs):
        profiler = cProfile.Profile()
        started = time.perf_counter()
        result = profiler.runcall(original, *args, **kwargs)
        totals["seconds"] += time.perf_counter() - started
        totals["calls"] += 1
        stats = pstats.Stats(profiler).stats
        for label, names in SCORING_PARTS.items():
            # a function's cumulative time counted once (the outermost call: recursion-free here)
            totals["parts"][label] += sum(entry[3] for (_, _, name), entry in stats.items() if name in names)
        return result

    nodes.score_test_images = profiled
    return totals


def prepare_project(project: Path, code: Path = REPO) -> None:
    """A throwaway copy of the project at ``code`` in ``project`` (pyproject + conf, an empty
    conf/local), made the current directory and bootstrapped for a KedroSession."""
    from kedro.framework.startup import bootstrap_project

    project.mkdir(parents=True, exist_ok=True)
    shutil.copy(code / "pyproject.toml", project)
    shutil.copytree(code / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    # bootstrap_project wants a source folder; the package itself is imported from PYTHONPATH / the install.
    (project / "src").mkdir()
    os.chdir(project)
    bootstrap_project(project)


def run_child(pipeline: str, params: str, code: Path, result_path: Path, profile: bool = False) -> None:
    """Run ``pipeline`` in a throwaway copy of the project at ``code`` (a checkout or an exported
    revision); write stage times, wall, peak RSS and the published metrics per category as JSON."""
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    from kedro.framework.cli.utils import _split_params
    from kedro.framework.project import settings
    from kedro.framework.session import KedroSession

    from fedpatchcore.hooks import NodeTimingHook

    with tempfile.TemporaryDirectory(prefix="fedpatchcore_e2e_") as workdir:
        project = Path(workdir)
        prepare_project(project, code)
        runtime_params = _split_params(None, None, params) if params else {}
        scoring_profile = profile_scoring_node() if profile else None
        start = time.perf_counter()
        with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
            session.run(pipeline_names=[pipeline])
        wall = time.perf_counter() - start
        timing_hook = next(hook for hook in settings.HOOKS if isinstance(hook, NodeTimingHook))
        metrics = published_metrics(project, pipeline)
    per_stage: dict[str, float] = defaultdict(float)
    for name, seconds in timing_hook.timings.items():
        per_stage[stage_of(name)] += seconds
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result_path.write_text(
        json.dumps({"pipeline": pipeline, "wall": wall, "stages": per_stage, "nodes": len(timing_hook.timings),
                    "peak_rss_gib": peak_kib / 2**20, "metrics": metrics, "scoring_profile": scoring_profile})
    )  # fmt: skip


#: Per-category metrics printed (and compared between two runs).
METRICS = ("image_auroc", "aucspro_0.05")


def published_metrics(project: Path, pipeline: str) -> dict[str, dict[str, float | None]]:
    """``{category: {metric: value}}`` of the run's newest ``metrics_<pipeline>.json``."""
    versions = sorted((project / "data" / "08_reporting" / f"metrics_{pipeline}.json").glob("*/*.json"))
    if not versions:
        return {}
    published = json.loads(versions[-1].read_text())
    return {category: table_metrics(values) for category, values in sorted(published.get("categories", {}).items())}


def table_metrics(values: dict) -> dict[str, float | None]:
    """``image_auroc`` and ``aucspro_0.05`` of one category's metrics entry (``aucspro`` is keyed by limit)."""
    spro = {float(limit): value for limit, value in (values.get("aucspro") or {}).items()}
    return {"image_auroc": values.get("image_auroc"), "aucspro_0.05": spro.get(0.05)}


def export_revision(revision: str, into: Path) -> Path:
    """``src``, ``conf`` and ``pyproject.toml`` of git ``revision`` under ``into`` (git archive)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "src", "conf", "pyproject.toml"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_pipeline(pipeline: str, params: str, code: Path = REPO, profile: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedpatchcore_e2e_result_") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", pipeline, "--params", params, "--result", str(result),
                   "--code-dir", str(code)] + (["--profile-scoring"] if profile else [])  # fmt: skip
        # The child imports the package from the code under test, whatever is installed; what
        # PYTHONPATH held (e.g. packages installed with pip --target) stays importable after it.
        path = os.pathsep.join([str(code / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "PYTHONPATH": path}
        subprocess.run(command, check=True, env=env)
        return json.loads(result.read_text())


def print_result(result: dict, label: str) -> None:
    print(f"pipeline={result['pipeline']} ({label}) nodes={result['nodes']} cpus={os.cpu_count()}")
    print(f"{'stage':<18}{'seconds':>10}")
    for stage, seconds in sorted(result["stages"].items(), key=lambda item: -item[1]):
        print(f"{stage:<18}{seconds:>10.1f}")
    print(f"{'total (nodes)':<18}{sum(result['stages'].values()):>10.1f}")
    print(f"wall_time_s={result['wall']:.1f} peak_rss_gib={result['peak_rss_gib']:.2f}")
    profile = result.get("scoring_profile")
    if profile and profile["calls"]:
        total = profile["seconds"]
        parts = "; ".join(f"{label} {seconds:.1f}" for label, seconds in profile["parts"].items() if seconds >= 0.05)
        print(f"scoring node ({profile['calls']} call(s), cProfile on): {total:.1f} s: {parts}")
    if result.get("metrics"):
        print(f"{'category':<18}" + "".join(f"{name:>14}" for name in METRICS))
        for category, values in result["metrics"].items():
            cells = "".join(f"{'-' if values[n] is None else format(values[n], '.4f'):>14}" for n in METRICS)
            print(f"{category:<18}{cells}")


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
    parser.add_argument("--backbone", default=None, help="autovi: backbone.name (default: the project's default)")
    parser.add_argument(
        "--pipelines", default="centralized,federated", help="autovi: comma list of the pipelines run"
    )
    parser.add_argument("--code", default=None, help="git revision whose src/ and conf/ run (default: this checkout)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--keep-data", type=Path, default=None, help="autovi: write the dataset here and keep it (reused if there)"
    )
    parser.add_argument(
        "--random-init-timing-only",
        action="store_true",
        help="autovi: time wide_resnet50_2 with random weights when its weight file is absent",
    )
    parser.add_argument(
        "--profile-scoring", action="store_true", help="cProfile the scoring node: where its time goes"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--code-dir", type=Path, default=REPO, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

    if args.child:
        run_child(args.child, args.params, args.code_dir, args.result, args.profile_scoring)
        return

    with tempfile.TemporaryDirectory(prefix="fedpatchcore_autovi_") as tmp:
        tmp = Path(tmp)
        code = export_revision(args.code, tmp / "code") if args.code else REPO
        revision = args.code or "working tree"
        results = []
        if args.scale == "default":
            pipeline = args.pipeline or "federated"
            results.append(
                (run_pipeline(pipeline, args.params, code, args.profile_scoring), f"embedded default, {revision}")
            )
            print_result(*results[-1])
        else:
            results = run_autovi_like(args, tmp, code, revision)
    if args.json:
        args.json.write_text(json.dumps([{"label": label, **result} for result, label in results], indent=1))


def run_autovi_like(args, tmp: Path, code: Path, revision: str) -> list[tuple[dict, str]]:
    """The AutoVI-shaped dataset through each of ``args.pipelines``; prints and returns the results."""
    from fedpatchcore.core.features.backbones import DEFAULT_BACKBONE, BackboneWeightsMissing, load_backbone

    backbone = args.backbone or DEFAULT_BACKBONE
    weights = ""
    label = f"{backbone}, pretrained"
    if backbone == "wide_resnet50_2":
        try:
            load_backbone("wide_resnet50_2")
            label = "wide_resnet50_2, ImageNet weights"
        except BackboneWeightsMissing as error:
            if not args.random_init_timing_only:
                sys.exit(f"{error}\n(or pass --random-init-timing-only to time a randomly initialised network)")
            weights = str(random_wrn50_weights(tmp / "wrn50_random_init.pth"))
            label = "wide_resnet50_2, RANDOM-INIT weights: timings only"
    root = args.keep_data or tmp / "autovi_like"
    categories = [c for c in args.categories.split(",") if c]
    started = time.perf_counter()
    written = write_autovi_like(root, args.fraction, categories=categories)
    print(
        f"dataset: {sum(written.values())} PNGs in AutoVI layout ({args.fraction:g} of 300 train + 150 test "
        f"per category; {', '.join(f'{c} {AUTOVI_IMAGE_SIZES[c][0]}x{AUTOVI_IMAGE_SIZES[c][1]}' for c in written)}) "
        f"ready in {time.perf_counter() - started:.0f}s; backbone: {label}; code: {revision}"
    )
    params = autovi_run_params(root, backbone, args.device, args.clients, weights, args.params)
    results = []
    for pipeline in [p for p in args.pipelines.split(",") if p]:
        results.append((run_pipeline(pipeline, params, code, args.profile_scoring), f"{label}; code: {revision}"))
        print_result(*results[-1])
    return results


if __name__ == "__main__":
    main()
