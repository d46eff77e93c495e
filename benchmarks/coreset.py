"""Benchmark: our greedy k-center (plain and skipping loops) against today's loop and the yardstick.

Runs on the same seeded vectors and k, in one process:

* ``today``: the loop as it was before the skipping loop (BLAS ``sgemv`` per step; kept
  verbatim below as :func:`todays_loop`);
* ``plain`` / ``skip`` / ``auto``: ``fedpatchcore.core.coreset.kcenter.greedy_kcenter(method=...)``;
* ``reference``: ``select`` of ../shared/reference/kcenter_reference.py (relative to the
  repository root): sparse JL projection, ``torch.linalg.norm`` per step.

Data (``--data``):

* ``patch_like``: seeded non-negative clustered Gaussians of ``--dim`` columns (high intrinsic
  dimension: the worst case for any pruning);
* ``cnn``: real CNN patch features: EfficientNet-Lite0 (ImageNet weights, installed package)
  on the project's synthetic images of one category at 256 px (1024 patches of 152 dims per
  image), cached in ``--cache-dir``.

``--already-projected`` projects once (outside the timings) to ``--projection-dim`` and hands
the projected rows to every loop, which is how the pipeline calls it (the feature writer keeps
the projection); at 2M rows that is the only way the data fit in memory.

``--today-steps S`` / ``--reference-steps S`` time only the first S steps of those loops and
extrapolate linearly (their cost per step is constant: every step touches all N rows); such
rows are marked ``(extrapolated)`` and have no indices to compare.

The last line is ``speedup_vs_today=<today/auto> identical=<auto == today, in order>
same_set=<the same rows> speedup_vs_reference=<reference/auto> radius_ratio=<auto radius /
reference radius>`` (fields that were not measured are ``nan``). ``auto`` and ``plain`` always
choose the same indices (tested); today's loop computed its dot products with BLAS ``sgemv``,
whose last bit depends on a row's position in the call and on the thread count, so at float32
near-ties (two rows within an ulp or two) it may take two rows in the other order.

Usage: python benchmarks/coreset.py [--n 200000] [--dim 1536] [--ratio 0.01 | --k K] [--data cnn]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import numpy as np

from fedpatchcore.core.coreset import kcenter as coreset
from fedpatchcore.core.coreset.kcenter import coreset_size, greedy_kcenter, project
from fedpatchcore.core.features.projection import DEFAULT_PROJECTION_DIM

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "kcenter_reference.py"


def load_reference(path: Path = REFERENCE):
    if not path.is_file():
        sys.exit(
            f"reference implementation not found at {path}; this benchmark compares against "
            "../shared/reference/kcenter_reference.py relative to the repository root"
        )
    spec = importlib.util.spec_from_file_location("kcenter_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def patch_like_vectors(n: int, dim: int, seed: int, clusters: int = 64, block: int = 16384) -> np.ndarray:
    """Seeded stand-in for CNN patch features: non-negative (post-ReLU) clustered Gaussians
    with cluster-specific spread and cluster sizes, so the bank has dense and sparse regions."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, size=(clusters, dim)).astype(np.float32)
    spread = rng.uniform(0.2, 1.0, size=clusters).astype(np.float32)
    weights = rng.dirichlet(np.full(clusters, 0.5))
    labels = rng.choice(clusters, size=n, p=weights)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        noise *= spread[labels[start:stop], None]
        noise += centres[labels[start:stop]]
        np.maximum(noise, 0.0, out=out[start:stop])
    return out


def cnn_patch_features(
    n: int, seed: int, cache_dir: Path, category: str = "circuit_board", size: int = 256
) -> np.ndarray:
    """``n`` EfficientNet-Lite0 patch features (152 dims) of synthetic ``category`` images, cached."""
    path = cache_dir / f"cnn_{category}_{size}px_seed{seed}_{n}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    import torch

    from fedpatchcore.core.data.synthetic import render_image
    from fedpatchcore.core.features.backbones import load_backbone
    from fedpatchcore.core.features.embedding import PatchEmbedder

    embedder = PatchEmbedder(load_backbone("efficientnet_lite0"), neighbourhood=3, device="cpu")
    h, w = embedder.grid_size(size)
    n_images = math.ceil(n / (h * w))
    out = np.empty((n_images * h * w, embedder.feature_dim), dtype=np.float32)
    row = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, n_images, 8):
            images = np.stack(
                [
                    render_image(category, None, np.random.default_rng([seed, i]), (size, size))[0]
                    for i in range(first, min(n_images, first + 8))
                ]
            )
            feats = embedder.embed(images).reshape(-1, embedder.feature_dim)
            out[row : row + len(feats)] = feats
            row += len(feats)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, out[:n])
    print(
        f"cached {n} CNN patch features of {n_images} images in {path} ({time.perf_counter() - started:.0f}s)"
    )
    return np.load(path, mmap_mode="r")


def todays_loop(vectors: np.ndarray, k: int, *, projection_dim, seed: int, already_projected: bool,
                steps: int | None = None) -> np.ndarray:  # fmt: skip
    """``greedy_kcenter`` as it was before the skipping loop: the same preparation, and every
    step one BLAS ``np.dot(work, centre)`` over all rows (verbatim copy of the old loop)."""
    use_projection = (
        (not already_projected) and projection_dim is not None and projection_dim < vectors.shape[1]
    )
    work = coreset._prepare_cpu(vectors, projection_dim if use_projection else None, seed, np.float32)
    starts = coreset._starting_rows(work.shape[0], 1, seed)
    k = k if steps is None else min(k, steps)
    n_rows = work.shape[0]
    half_norms = np.empty(n_rows, dtype=work.dtype)
    for start in range(0, n_rows, coreset._ROW_BLOCK):
        block = work[start : start + coreset._ROW_BLOCK]
        half_norms[start : start + len(block)] = 0.5 * np.einsum("ij,ij->i", block, block)
    min_dist = np.full(n_rows, np.inf, dtype=work.dtype)
    buffer = np.empty(n_rows, dtype=work.dtype)
    chosen = np.empty(k, dtype=np.int64)
    minus_inf = work.dtype.type(-np.inf)

    def absorb(index: int) -> None:
        np.dot(work, work[index], out=buffer)
        np.subtract(half_norms, buffer, out=buffer)
        np.add(buffer, half_norms[index], out=buffer)
        np.minimum(min_dist, buffer, out=min_dist)
        min_dist[index] = minus_inf

    for i, index in enumerate(starts):
        chosen[i] = index
        absorb(int(index))
    for i in range(len(starts), k):
        index = int(np.argmax(min_dist))
        chosen[i] = index
        if i + 1 < k:
            absorb(index)
    return chosen


CPU_SECONDS: dict[str, float] = {}


def timed(fn, name: str = ""):
    """Result and wall seconds of ``fn()``; its process CPU seconds go to ``CPU_SECONDS[name]``."""
    started, cpu = time.perf_counter(), time.process_time()
    result = fn()
    CPU_SECONDS[name] = time.process_time() - cpu
    return result, time.perf_counter() - started


def profile_skipping(vectors: np.ndarray, k: int, kwargs: dict, top: int = 18) -> None:
    """The skipping loop once more under cProfile: time per step by function (own time), and its counters."""
    import cProfile
    import pstats

    from fedpatchcore.core.coreset import skipping

    stats: dict = {}
    original = skipping.greedy_skipping

    def with_stats(*args, **kw):
        return original(*args, stats=stats, **kw)

    skipping.greedy_skipping = with_stats
    profiler = cProfile.Profile(time.process_time)  # CPU time of this process, both threads counted
    try:
        profiler.runcall(greedy_kcenter, vectors, k, method="skip", **kwargs)
    finally:
        skipping.greedy_skipping = original
    table = pstats.Stats(profiler)
    total = sum(entry[2] for entry in table.stats.values())
    print(f"profile of the skipping loop (cProfile, CPU time; {total:.1f} s in all, {1e3 * total / k:.3f} ms per step):")
    print(f"{'own CPU s':>10}{'ms/step':>9}{'calls':>10}  function")
    for (path, line, name), (_, calls, own, _, _) in sorted(table.stats.items(), key=lambda item: -item[1][2])[:top]:
        print(f"{own:>10.2f}{1e3 * own / k:>9.3f}{calls:>10}  {name} ({Path(path).name}:{line})")
    print("counters: " + " ".join(f"{key}={value}" for key, value in stats.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="number of patch vectors")
    parser.add_argument("--dim", type=int, default=1536, help="feature dimension (patch_like data)")
    parser.add_argument("--ratio", type=float, default=0.01, help="coreset.ratio")
    parser.add_argument("--k", type=int, default=None, help="coreset size (overrides --ratio)")
    parser.add_argument("--seed", type=int, default=0, help="data, projection and start seed")
    parser.add_argument("--data", choices=["patch_like", "cnn"], default="patch_like")
    parser.add_argument("--features", type=Path, default=None, help="rows from this .npy instead (first --n)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "fedpatchcore-bench")
    parser.add_argument("--projection-dim", type=int, default=DEFAULT_PROJECTION_DIM, help="ours")
    parser.add_argument("--already-projected", action="store_true", help="project once, outside the timings")
    parser.add_argument(
        "--compare", default="today,auto,reference", help="comma list of today,plain,skip,auto,reference"
    )
    parser.add_argument("--today-steps", type=int, default=None, help="extrapolate today's loop from S steps")
    parser.add_argument(
        "--reference-steps", type=int, default=None, help="extrapolate the reference from S steps"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--skip-reference", action="store_true", help="same as leaving reference out of --compare"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also run the skipping loop under cProfile: where a step's time goes"
    )
    args = parser.parse_args(argv)
    compare = [name.strip() for name in args.compare.split(",") if name.strip()]
    if args.skip_reference and "reference" in compare:
        compare.remove("reference")

    t0 = time.perf_counter()
    if args.features is not None:
        vectors = np.load(args.features, mmap_mode="r")[: args.n]
        args.data = f"file {args.features.name}"
    elif args.data == "cnn":
        vectors = cnn_patch_features(args.n, args.seed, args.cache_dir)
    else:
        vectors = patch_like_vectors(args.n, args.dim, args.seed)
    k = args.k if args.k is not None else coreset_size(args.n, args.ratio)
    original = vectors
    projection_dim = args.projection_dim
    if args.already_projected and projection_dim < vectors.shape[1]:
        vectors = project(vectors, projection_dim, args.seed)
    else:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    print(
        f"data: {args.data} n={len(vectors)} dim={original.shape[1]} k={k} ({k / len(vectors):.2%}) "
        f"seed={args.seed} rows given to the loops: {vectors.shape[1]} columns "
        f"({'already projected' if args.already_projected else f'projected to {projection_dim} inside'}); "
        f"prepared in {time.perf_counter() - t0:.1f}s"
    )
    kwargs = dict(projection_dim=projection_dim, seed=args.seed, already_projected=args.already_projected)
    results: dict[str, tuple[np.ndarray | None, float, bool]] = {}

    for name in compare:
        if name == "today":
            steps = args.today_steps if args.today_steps and args.today_steps < k else None
            chosen, seconds = timed(lambda steps=steps: todays_loop(vectors, k, steps=steps, **kwargs), name)
            if steps is not None:
                seconds, chosen = seconds * (k - 1) / (steps - 1), None
                CPU_SECONDS[name] *= (k - 1) / (steps - 1)
            results[name] = (chosen, seconds, steps is not None)
        elif name in ("plain", "skip", "auto"):
            chosen, seconds = timed(lambda name=name: greedy_kcenter(vectors, k, method=name, **kwargs), name)
            assert len(np.unique(chosen)) == k, f"{name}: indices are not unique"
            results[name] = (chosen, seconds, False)
        elif name == "reference":
            reference = load_reference()
            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            steps = args.reference_steps if args.reference_steps and args.reference_steps < k else None
            chosen, seconds = timed(
                lambda steps=steps, ref=reference: ref.select(original, steps or k, seed=args.seed), name
            )
            if steps is not None:
                seconds, chosen = seconds * (k - 1) / (steps - 1), None
                CPU_SECONDS[name] *= (k - 1) / (steps - 1)
            results[name] = (chosen, seconds, steps is not None)
        else:
            sys.exit(f"unknown --compare entry {name!r}")

    if args.profile:
        profile_skipping(vectors, k, kwargs)

    today = results.get("today", (None, math.nan, False))
    radii: dict[str, float] = {}
    measure_radius = "reference" in results and results["reference"][0] is not None
    print(f"{'loop':<10}{'seconds':>10}{'cpu s':>10}  {'vs today':>9}  same as today (order / set)  radius")
    for name, (chosen, seconds, extrapolated) in results.items():
        if measure_radius and chosen is not None and name in ("reference", "auto", "skip", "plain", "today"):
            radii[name] = load_reference().covering_radius(original, chosen)
        same = "-"
        if chosen is not None and today[0] is not None and name != "today":
            in_order = int((chosen == today[0]).sum())
            same = f"{in_order}/{k} / {len(np.intersect1d(chosen, today[0]))}/{k}"
        print(
            f"{name:<10}{seconds:>10.2f}{CPU_SECONDS.get(name, math.nan):>10.2f}  {today[1] / seconds:>8.2f}x  {same:>27}  "
            f"{radii.get(name, math.nan):.4f}{'  (extrapolated)' if extrapolated else ''}"
        )
    ours = results.get("auto") or results.get("skip") or results.get("plain")
    ours_name = next((n for n in ("auto", "skip", "plain") if n in results), None)
    identical = ours is not None and today[0] is not None and np.array_equal(ours[0], today[0])
    same_set = (
        ours is not None and today[0] is not None and np.array_equal(np.sort(ours[0]), np.sort(today[0]))
    )
    ref_seconds = results.get("reference", (None, math.nan, False))[1]
    radius_ratio = radii.get(ours_name, math.nan) / radii.get("reference", math.nan) if radii else math.nan
    our_seconds = ours[1] if ours else math.nan
    print(
        f"speedup_vs_today={today[1] / our_seconds:.2f} identical={identical if today[0] is not None else 'nan'} "
        f"same_set={same_set if today[0] is not None else 'nan'} "
        f"speedup_vs_reference={ref_seconds / our_seconds:.2f} radius_ratio={radius_ratio:.4f}"
    )


if __name__ == "__main__":
    main()
