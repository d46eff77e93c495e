"""Images/s of the inspector: torch against ONNX Runtime on this CPU, the same bank and images.

    python benchmarks/inspector.py                     # embedded default size (128 px), batch 8, 2 threads
    python benchmarks/inspector.py --image-size 224 --batch 1 --threads 2 --repeats 5

The embedded synthetic generator makes ``--images`` test-like images of one category at
``--image-size``; the default backbone embeds the training images into a bank (every 8th patch
vector). Then the same images are scored ``--repeats`` times per runtime (embedding + nearest
neighbour + anomaly map + image score: what a station does per image), interleaved so machine
load hits both alike; the best repeat counts. Also prints the largest relative difference of
the image scores between the runtimes. Prints one line per runtime and the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--category", default="circuit_board")
    args = parser.parse_args()

    import torch

    from fedpatchcore.core.banks.knn import build_index
    from fedpatchcore.core.data.loading import load_image
    from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
    from fedpatchcore.core.features.embedding import set_threads
    from fedpatchcore.core.features.onnx_embedder import OnnxEmbedder
    from fedpatchcore.core.features.setting import EmbedderCache, Setting
    from fedpatchcore.core.scoring.predict import CategoryModel

    set_threads(args.threads)
    size = (args.image_size, args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"
        generate_synthetic_dataset(
            root, seed=0, image_size=size, n_train=8, n_test_good=args.images, n_test_per_defect=0,
            categories=[args.category],
        )
        train = sorted((root / args.category / "train" / "good").glob("*.png"))
        test = sorted((root / args.category / "test").rglob("*.png"))[: args.images]
        train_images = np.stack([load_image(p, size) for p in train])
        images = np.stack([load_image(p, size) for p in test])

    setting = Setting(image_size=size)
    torch_embedder = EmbedderCache("cpu").get(setting)
    bank = torch_embedder.embed(train_images).reshape(-1, torch_embedder.feature_dim)[::8].copy()
    index = build_index(bank)
    started = time.perf_counter()
    onnx_embedder = OnnxEmbedder.from_embedder(torch_embedder, size, threads=args.threads)
    export_s = time.perf_counter() - started
    models = {
        "torch": CategoryModel(args.category, setting, size, torch_embedder, bank, index),
        "onnxruntime": CategoryModel(args.category, setting, size, onnx_embedder, bank, index),
    }
    best = {name: float("inf") for name in models}
    scores = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            started = time.perf_counter()
            out = [model.score(images[i : i + args.batch])[1] for i in range(0, len(images), args.batch)]
            best[name] = min(best[name], time.perf_counter() - started)
            scores[name] = np.concatenate(out)
    rel = np.abs(scores["onnxruntime"] - scores["torch"]) / np.abs(scores["torch"])
    import onnxruntime

    print(
        f"images={len(images)} size={args.image_size} batch={args.batch} threads={args.threads} "
        f"torch={torch.__version__} onnxruntime={onnxruntime.__version__} export_s={export_s:.1f}"
    )
    for name, seconds in best.items():
        print(f"{name:12s} {len(images) / seconds:8.1f} images/s  ({seconds:.2f} s best of {args.repeats})")
    print(f"speedup_onnxruntime_vs_torch={best['torch'] / best['onnxruntime']:.2f} max_rel_score_diff={rel.max():.2e}")
    print(f"load_average={' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
