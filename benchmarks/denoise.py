"""Time of patch denoising (``core/coreset/denoise.py``) per method, as a client pays it per category.

Rows are synthetic projected patch vectors (what the client scores: the feature file's random
projection) laid out image by image on a patch grid. The cost is one window at a time over the
grid's positions, the same for every position, so a large grid is timed on a ``--crop`` x
``--crop`` corner of it and scaled by the number of positions (the printout says which).

    python benchmarks/denoise.py                                   # the embedded default: a client's 24 images, 16x16
    python benchmarks/denoise.py --images 300 --grid 50 --crop 10  # AutoVI scale (400 px, stride 8), extrapolated
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from fedpatchcore.core.coreset.denoise import METHODS, outlier_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="a client's images of one category")
    parser.add_argument("--grid", type=int, default=16, help="patches per side of an image")
    parser.add_argument("--dim", type=int, default=128, help="projection dimension (coreset.projection_dim)")
    parser.add_argument("--crop", type=int, default=None, help="time only a crop x crop corner of the grid")
    parser.add_argument("--radius", type=int, default=1)
    parser.add_argument("--neighbours", type=int, default=3)
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "none"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    side = min(args.crop or args.grid, args.grid)
    rng = np.random.default_rng(args.seed)
    # Each position has its own mean (a part looks different at each place); images scatter around it.
    means = rng.normal(size=(1, side, side, args.dim)).astype(np.float32) * 4
    rows = (means + rng.normal(size=(args.images, side, side, args.dim)).astype(np.float32)).reshape(-1, args.dim)
    scale = (args.grid / side) ** 2
    print(
        f"{args.images} images x {args.grid}x{args.grid} patches x dim {args.dim}"
        + (f" (timed on a {side}x{side} crop, x{scale:g} for the whole grid)" if scale > 1 else "")
        + f"; radius {args.radius}, neighbours {args.neighbours}; load average {os.getloadavg()[0]:.2f}"
    )
    for method in args.methods.split(","):
        started = time.perf_counter()
        outlier_scores(rows, args.images, (side, side), method, args.radius, args.neighbours)
        seconds = time.perf_counter() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  {method:9s} {seconds * scale:8.2f} s per category (measured {seconds:.2f} s), peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
