"""Throughput of the full PatchCore embedding vs the bare backbone forward pass.

Prints images/s of
* ``bare``:  ``backbone(x)`` on an already normalised float batch ``(B, 3, S, S)``;
* ``embed``: ``PatchEmbedder.embed(uint8 batch)`` = uint8->float + ImageNet normalisation,
  the same forward pass, 3x3 neighbourhood averaging, bilinear upsampling, concatenation
  and the copy to numpy;
and the ratio embed/bare (target >= 0.85). The two are timed interleaved, batch by batch,
on the same batches, so load from other processes hits both alike; the median and best
of ``--repeats`` rounds are reported.

    python benchmarks/extraction.py --threads 1 --batch-size 8 --image-size 224
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from fedpatchcore.core.backbones import BackboneWeightsMissing, load_backbone
from fedpatchcore.core.patchcore import PatchEmbedder, set_threads


def bench_backbone(name: str, args: argparse.Namespace) -> dict[str, float] | None:
    try:
        backbone = load_backbone(name, device=args.device)
    except BackboneWeightsMissing as err:
        if not (args.random_init_timing_only and name == "wide_resnet50_2"):
            print(f"[{name}] skipped: {err}")
            return None
        # Timing only: speed does not depend on the weight values. Never used for features.
        from torchvision.models import wide_resnet50_2

        from fedpatchcore.core.backbones import WideResNet50Features

        print(f"[{name}] weights absent: RANDOM-INIT network, timings only (--random-init-timing-only)")
        backbone = WideResNet50Features(wide_resnet50_2(weights=None)).to(args.device)
    embedder = PatchEmbedder(backbone, neighbourhood=3, device=args.device)
    device = embedder.device
    rng = np.random.default_rng(args.seed)
    batches = [
        rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3), dtype=np.uint8)
        for _ in range(args.batches)
    ]
    # Bare input: normalised NCHW float tensors prepared outside the timed region.
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    bare_inputs = [
        ((torch.from_numpy(b).permute(0, 3, 1, 2).float() / 255.0 - mean) / std).contiguous().to(device)
        for b in batches
    ]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_bare(i: int) -> None:
        with torch.inference_mode():
            backbone(bare_inputs[i])
        sync()

    def run_embed(i: int) -> None:
        embedder.embed(batches[i])
        sync()

    for i in range(min(2, args.batches)):  # warm-up (oneDNN primitive caches, allocator)
        run_bare(i)
        run_embed(i)

    bare_t, embed_t = [], []
    for r in range(args.repeats):
        tb = te = 0.0
        for i in range(args.batches):
            # alternate the order each round so neither always runs first
            order = (run_bare, run_embed) if (r + i) % 2 == 0 else (run_embed, run_bare)
            for fn in order:
                t0 = time.perf_counter()
                fn(i)
                dt = time.perf_counter() - t0
                if fn is run_bare:
                    tb += dt
                else:
                    te += dt
        bare_t.append(tb)
        embed_t.append(te)

    n_img = args.batch_size * args.batches
    res = {
        "bare_med": n_img / statistics.median(bare_t),
        "embed_med": n_img / statistics.median(embed_t),
        "bare_best": n_img / min(bare_t),
        "embed_best": n_img / min(embed_t),
    }
    res["ratio_med"] = res["embed_med"] / res["bare_med"]
    res["ratio_best"] = res["embed_best"] / res["bare_best"]
    h, w = embedder.grid_size(args.image_size)
    print(
        f"[{name}] device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"image={args.image_size} grid={h}x{w} dim={embedder.feature_dim}\n"
        f"  bare backbone : {res['bare_med']:8.2f} img/s median  {res['bare_best']:8.2f} best\n"
        f"  full embedding: {res['embed_med']:8.2f} img/s median  {res['embed_best']:8.2f} best\n"
        f"  ratio         : {res['ratio_med']:8.3f} median        {res['ratio_best']:8.3f} best  "
        f"(target >= 0.85: {'met' if res['ratio_med'] >= 0.85 else 'NOT met'})"
    )
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "wide_resnet50_2"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch/faiss CPU threads (0: leave default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--random-init-timing-only",
        action="store_true",
        help="time wide_resnet50_2 with random weights when its file is absent (speed only)",
    )
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    for name in args.backbones:
        bench_backbone(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
