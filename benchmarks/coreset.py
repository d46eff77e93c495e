"""Benchmark: our approximate greedy k-center against the reference implementation.

Runs the reference ``select`` (../shared/reference/kcenter_reference.py, relative to the
repository root) and ``fedpatchcore.core.coreset.greedy_kcenter`` on the same seeded,
patch-feature-like vectors with the same k, and prints wall time and covering radius
(both measured with the reference's ``covering_radius``). The last line is

    speedup=<ref_time/our_time> radius_ratio=<our_radius/ref_radius>

Usage: python benchmarks/coreset.py [--n 200000] [--dim 1536] [--ratio 0.01] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedpatchcore.core.coreset import DEFAULT_PROJECTION_DIM, coreset_size, greedy_kcenter

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="number of patch vectors")
    parser.add_argument("--dim", type=int, default=1536, help="feature dimension")
    parser.add_argument("--ratio", type=float, default=0.01, help="coreset.ratio")
    parser.add_argument("--seed", type=int, default=0, help="data, projection and start seed")
    parser.add_argument("--projection-dim", type=int, default=DEFAULT_PROJECTION_DIM, help="ours")
    parser.add_argument("--num-starts", type=int, default=1, help="ours")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-reference", action="store_true", help="time ours only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    reference = load_reference()
    t0 = time.perf_counter()
    vectors = patch_like_vectors(args.n, args.dim, args.seed)
    k = coreset_size(args.n, args.ratio)
    print(
        f"data: n={args.n} dim={args.dim} k={k} seed={args.seed} ({vectors.nbytes / 2**30:.2f} GiB float32, "
        f"generated in {time.perf_counter() - t0:.1f}s); torch threads={torch.get_num_threads()}"
    )

    t0 = time.perf_counter()
    ours = greedy_kcenter(
        vectors, k, projection_dim=args.projection_dim, seed=args.seed, num_starts=args.num_starts
    )
    our_time = time.perf_counter() - t0
    assert len(np.unique(ours)) == k, "our indices are not unique"
    our_radius = reference.covering_radius(vectors, ours)
    print(f"ours:      time={our_time:8.2f}s radius={our_radius:.4f} (projection_dim={args.projection_dim})")
    if args.skip_reference:
        return

    t0 = time.perf_counter()
    ref = reference.select(vectors, k, seed=args.seed)
    ref_time = time.perf_counter() - t0
    ref_radius = reference.covering_radius(vectors, ref)
    print(
        f"reference: time={ref_time:8.2f}s radius={ref_radius:.4f} "
        f"(projection_dim={reference.jl_dimension(args.n)})"
    )
    print(f"speedup={ref_time / our_time:.2f} radius_ratio={our_radius / ref_radius:.4f}")


if __name__ == "__main__":
    main()
