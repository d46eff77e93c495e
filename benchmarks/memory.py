"""Benchmark: peak memory of the streaming coreset path on a large synthetic bank.

Streams N synthetic patch vectors (default 1,000,000 × 1536, the size of a real
per-category bank) in batches through ``PatchFeatureWriter`` (fp16 file on disk +
in-RAM random projection), selects a 1% coreset with ``select_coreset_streaming`` and
gathers the chosen rows from the file. Prints the time and the peak resident memory of
each phase (VmHWM, reset between phases through /proc/self/clear_refs when the kernel
allows it) and of the whole run (the largest phase peak; ``ru_maxrss`` is printed too but
is reset along with VmHWM on kernels that honour clear_refs). The ~3 GB float16 file is written under
``--workdir`` (default: a fresh temporary directory) and deleted at the end.

Usage: python benchmarks/memory.py [--n 1000000] [--dim 1536] [--ratio 0.01] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fedpatchcore.core.coreset.kcenter import coreset_size
from fedpatchcore.core.coreset.streaming import select_coreset_streaming
from fedpatchcore.core.features.feature_store import PatchFeatureWriter
from fedpatchcore.core.features.projection import DEFAULT_PROJECTION_DIM


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def mib(kib: int) -> str:
    return f"{kib / 1024:8.1f} MiB"


def synthetic_batches(n: int, dim: int, batch: int, seed: int, clusters: int = 64):
    """Seeded patch-feature-like batches (non-negative clustered Gaussians), generated lazily."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, size=(clusters, dim)).astype(np.float32)
    spread = rng.uniform(0.2, 1.0, size=clusters).astype(np.float32)
    weights = rng.dirichlet(np.full(clusters, 0.5))
    for start in range(0, n, batch):
        size = min(batch, n - start)
        labels = rng.choice(clusters, size=size, p=weights)
        data = rng.standard_normal((size, dim), dtype=np.float32)
        data *= spread[labels, None]
        data += centres[labels]
        np.maximum(data, 0.0, out=data)
        yield data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of patch vectors")
    parser.add_argument("--dim", type=int, default=1536, help="feature dimension")
    parser.add_argument("--ratio", type=float, default=0.01, help="coreset.ratio")
    parser.add_argument("--batch", type=int, default=4096, help="rows per appended batch")
    parser.add_argument("--projection-dim", type=int, default=DEFAULT_PROJECTION_DIM)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the fp16 file goes (default: tempdir)"
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="fedpatchcore-mem-", dir=args.workdir))
    k = coreset_size(args.n, args.ratio)
    print(f"n={args.n} dim={args.dim} k={k} batch={args.batch} projection_dim={args.projection_dim}")
    print(f"float32 bank would be {args.n * args.dim * 4 / 2**30:.2f} GiB; fp16 file under {workdir}")
    can_reset = reset_peak()
    print(f"start: RSS={mib(status_kib('VmRSS'))} (per-phase peaks {'on' if can_reset else 'unavailable'})")
    total = time.perf_counter()
    peaks = [status_kib("VmHWM")]
    try:
        # 1. stream features to disk, keep the projection in RAM
        t0 = time.perf_counter()
        writer = PatchFeatureWriter(
            workdir / "bank.npy", args.dim, projection_dim=args.projection_dim, seed=args.seed
        )
        for batch in synthetic_batches(args.n, args.dim, args.batch, args.seed):
            writer.append(batch)
        features = writer.close()
        write_time = time.perf_counter() - t0
        size_gib = (workdir / "bank.npy").stat().st_size / 2**30
        peaks.append(status_kib("VmHWM"))
        print(
            f"write:  {write_time:7.1f}s  peak={mib(peaks[-1])}  rss={mib(status_kib('VmRSS'))}  "
            f"file={size_gib:.2f} GiB  projected={features.projected.nbytes / 2**20:.0f} MiB"
        )

        # 2. greedy k-center on the in-RAM projection
        reset_peak()
        t0 = time.perf_counter()
        # keep_projection=False: the loop centres the projection in place instead of copying it
        indices = select_coreset_streaming(features, k, seed=args.seed, keep_projection=False)
        select_time = time.perf_counter() - t0
        peaks.append(status_kib("VmHWM"))
        print(f"select: {select_time:7.1f}s  peak={mib(peaks[-1])}  rss={mib(status_kib('VmRSS'))}")

        # 3. read only the chosen rows back in full precision
        reset_peak()
        t0 = time.perf_counter()
        coreset = features.gather(indices)
        gather_time = time.perf_counter() - t0
        peaks.append(status_kib("VmHWM"))
        print(
            f"gather: {gather_time:7.1f}s  peak={mib(peaks[-1])}  rss={mib(status_kib('VmRSS'))}  "
            f"coreset={coreset.shape} {coreset.dtype}"
        )
        assert len(np.unique(indices)) == k and np.isfinite(coreset).all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ru_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"total:  {time.perf_counter() - total:7.1f}s")
    print(
        f"peak RSS whole run = {max(peaks) / 2**20:.2f} GiB (largest phase VmHWM); "
        f"ru_maxrss = {ru_maxrss_kib / 2**20:.2f} GiB{' (since the last reset)' if can_reset else ''}"
    )


if __name__ == "__main__":
    main()
