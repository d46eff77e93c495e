"""Throughput of the full PatchCore embedding vs the bare backbone forward pass.

Prints images/s of
* ``bare``:  ``backbone(x)`` on an already normalised float batch ``(B, 3, S, S)``;
* ``embed``: ``PatchEmbedder.embed(uint8 batch)`` = uint8->float + ImageNet normalisation,
  the same forward pass, 3x3 neighbourhood averaging, bilinear upsampling, concatenation
  and the copy to numpy;
and the ratio embed/bare (target >= 0.85). The two are timed interleaved, batch by batch,
on the same batches, so load from other processes hits both alike; the median and best
of ``--repeats`` rounds are reported. On CUDA (``--device cuda``) it also times
``PatchEmbedder.embed_batches`` over all batches (features copied to the host as float16,
each copy overlapped with the next batch) against the bare backbone on the same batches;
``--precision`` picks the embedding's arithmetic (``auto``: float16 on CUDA, float32 on CPU).

    python benchmarks/extraction.py --threads 1 --batch-size 8 --image-size 224
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedpatchcore.core.features.backbones import BackboneWeightsMissing, load_backbone
from fedpatchcore.core.features.embedding import PatchEmbedder, set_threads


def backbone_for_timing(name: str, args: argparse.Namespace, what: str = "benchmark"):
    """``load_backbone(name)``; without its weights, a random-init WRN50 under
    ``--random-init-timing-only`` (speed does not depend on the weight values), else None."""
    try:
        return load_backbone(name, device=args.device)
    except BackboneWeightsMissing as err:
        if not (args.random_init_timing_only and name == "wide_resnet50_2"):
            print(f"[{name}] {what} skipped: {err}")
            return None
        # Timing only: speed does not depend on the weight values. Never used for features.
        from torchvision.models import wide_resnet50_2

        from fedpatchcore.core.features.backbones import WideResNet50Features

        print(f"[{name}] weights absent: RANDOM-INIT network, timings only (--random-init-timing-only)")
        return WideResNet50Features(wide_resnet50_2(weights=None)).to(args.device).freeze()


def bench_backbone(name: str, args: argparse.Namespace) -> dict[str, float] | None:
    backbone = backbone_for_timing(name, args)
    if backbone is None:
        return None
    embedder = PatchEmbedder(backbone, neighbourhood=3, device=args.device, precision=args.precision)
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
    if device.type == "cuda":
        bare_inputs = [x.contiguous(memory_format=torch.channels_last) for x in bare_inputs]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_bare(i: int) -> None:
        # the same arithmetic as the embedding (autocast for half precision), network only
        with torch.inference_mode(), embedder._autocast():
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
        f"[{name}] device={device} precision={embedder.precision} threads={torch.get_num_threads()} "
        f"batch={args.batch_size} image={args.image_size} grid={h}x{w} dim={embedder.feature_dim}\n"
        f"  bare backbone : {res['bare_med']:8.2f} img/s median  {res['bare_best']:8.2f} best\n"
        f"  full embedding: {res['embed_med']:8.2f} img/s median  {res['embed_best']:8.2f} best\n"
        f"  ratio         : {res['ratio_med']:8.3f} median        {res['ratio_best']:8.3f} best  "
        f"(target >= 0.85: {'met' if res['ratio_med'] >= 0.85 else 'NOT met'})"
    )
    if device.type == "cuda":
        # The whole stream: host uint8 batches in, host float16 features out, copies overlapped.
        streamed_t, bare_all_t = [], []
        for r in range(args.repeats):
            for fn in ("bare", "stream") if r % 2 == 0 else ("stream", "bare"):
                t0 = time.perf_counter()
                if fn == "bare":
                    with torch.inference_mode(), embedder._autocast():
                        for x in bare_inputs:
                            backbone(x)
                    sync()
                    bare_all_t.append(time.perf_counter() - t0)
                else:
                    for _ in embedder.embed_batches(iter(batches)):
                        pass
                    sync()
                    streamed_t.append(time.perf_counter() - t0)
        res["stream_med"] = n_img / statistics.median(streamed_t)
        res["bare_all_med"] = n_img / statistics.median(bare_all_t)
        print(
            f"  streamed (embed_batches, fp16 to host): {res['stream_med']:8.2f} img/s median vs bare "
            f"{res['bare_all_med']:8.2f}: ratio {res['stream_med'] / res['bare_all_med']:.3f}"
        )
    return res


def bench_feature_stage(name: str, args: argparse.Namespace) -> dict[str, float] | None:
    """The pipeline's whole feature stage vs the bare backbone on the same images.

    Stage = ``core.extraction.extract_patch_features`` on PNG files: decoding and resizing on
    the loader threads, embedding, fp16 writes to the feature file and the in-RAM projection.
    Bare = ``backbone(x)`` on the same images, already decoded and normalised in memory.
    """
    import tempfile

    from fedpatchcore.core.data.index import index_dataset
    from fedpatchcore.core.data.loading import load_image
    from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
    from fedpatchcore.core.features.extraction import extract_patch_features

    backbone = backbone_for_timing(name, args, "stage benchmark")
    if backbone is None:
        return None
    embedder = PatchEmbedder(backbone, neighbourhood=3, device=args.device, precision=args.precision)
    n_images = args.batch_size * args.batches
    with tempfile.TemporaryDirectory(prefix="fedpatchcore_extract_") as workdir:
        root = Path(workdir) / "images"
        generate_synthetic_dataset(
            root, image_size=(args.image_size, args.image_size), n_train=n_images, n_test_good=1,
            n_test_per_defect=1, categories=["circuit_board"],
        )  # fmt: skip
        samples, infos, _ = index_dataset("synthetic", root, ["circuit_board"])
        train = [s for s in samples if s.split == "train"]
        size = infos["circuit_board"].image_size
        mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
        std = torch.tensor(backbone.std).view(1, 3, 1, 1)
        decoded = np.stack([load_image(s.image_path, size) for s in train])
        bare_inputs = [
            (
                (torch.from_numpy(decoded[i : i + args.batch_size]).permute(0, 3, 1, 2).float() / 255 - mean)
                / std
            )
            .contiguous()
            .to(embedder.device)
            for i in range(0, n_images, args.batch_size)
        ]
        on_cuda = embedder.device.type == "cuda"
        if on_cuda:
            bare_inputs = [x.contiguous(memory_format=torch.channels_last) for x in bare_inputs]

        def run_bare() -> None:
            # the embedding's arithmetic (autocast on CUDA's half precision; float32 on CPU: none),
            # finished before the clock stops
            with torch.inference_mode(), embedder._autocast():
                for batch in bare_inputs:
                    backbone(batch)
            if on_cuda:
                torch.cuda.synchronize()

        def run_stage(round_number: int) -> None:
            extract_patch_features(
                train, infos, embedder, Path(workdir) / f"features_{round_number}", batch_size=args.batch_size,
                projection_dim=128, seed=0, num_workers=args.workers, description="benchmark",
            )  # fmt: skip

        run_bare()
        run_stage(-1)  # warm-up
        bare_t, stage_t = [], []
        for r in range(args.repeats):
            for fn in (run_bare, run_stage) if r % 2 == 0 else (run_stage, run_bare):
                t0 = time.perf_counter()
                fn() if fn is run_bare else fn(r)
                (bare_t if fn is run_bare else stage_t).append(time.perf_counter() - t0)
    bare = n_images / statistics.median(bare_t)
    stage = n_images / statistics.median(stage_t)
    print(
        f"[{name}] feature STAGE from PNG files ({n_images} images {args.image_size}px, "
        f"threads={torch.get_num_threads()}, loader workers={args.workers})\n"
        f"  bare backbone : {bare:8.2f} img/s median\n"
        f"  feature stage : {stage:8.2f} img/s median (decode + embed + fp16 write + projection)\n"
        f"  ratio         : {stage / bare:8.3f} (target >= 0.85: {'met' if stage / bare >= 0.85 else 'NOT met'})"
    )
    return {"bare": bare, "stage": stage, "ratio": stage / bare}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "wide_resnet50_2"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch/faiss CPU threads (0: leave default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto | float32 | float16 | bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="image-loading threads of the feature stage")
    parser.add_argument(
        "--no-stage",
        action="store_true",
        help="skip the feature-stage (PNG files -> feature file) comparison",
    )
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
        if not args.no_stage:
            bench_feature_stage(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
