"""The private summary bank on another draw of the synthetic data, outside Kedro: image AUC-ROC by ε.

A second dataset for the ``privacy_volume`` target (issue 21): the synthetic generator's
defect-free training images drawn at ``--draw-size`` and resized to ``--size`` (the experiment
draws them at 64 directly), any ``--seed``, ``--n`` images per category pooled in one place (the
sum the server sees under secure aggregation: the noise is one release's σ whatever the number
of clients). The test images are drawn and resized the same way. Per category: the public centres
(``public_images`` public images), ``rounds`` DP-Lloyd rounds with the project's own functions
(:mod:`fedpatchcore.core.privacy.summary`), scoring by distance over radius; for reference the
public centres alone and the plain PatchCore bank (every training patch, exact nearest neighbour).

    python benchmarks/privacy_summary.py                       # n=2400, 128 px drawn -> 64 px, seed 0
    python benchmarks/privacy_summary.py --n 240 --seed 1 --epsilons 1 8 inf

Prints a row per setting (mean and per-category image AUC-ROC), the wall time of each stage and
the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.data.synthetic import CATEGORY_DEFECTS, SYNTHETIC_CATEGORIES, render_image
from fedpatchcore.core.data.types import CategoryInfo
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.privacy.public import public_summary
from fedpatchcore.core.privacy.release import PrivacySettings
from fedpatchcore.core.privacy.summary import Statistics, image_statistics, lloyd_update
from fedpatchcore.core.scoring.summary import scaled_distances


def _images(category: str, split: str, count: int, seed: int, draw: int, size: int, defect: str | None = None):
    out = []
    for i in range(count):
        image, _ = render_image(category, defect, derive_rng(seed, category, split, i), (draw, draw))
        if draw != size:
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        out.append(image)
    return np.stack(out)


def _embed(embedder, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([embedder.embed(images[i : i + batch]) for i in range(0, len(images), batch)])


def _auroc(score, good: np.ndarray, bad: np.ndarray) -> float:
    def image_scores(features):
        n, h, w, d = features.shape
        return score(features.reshape(-1, d)).reshape(n, -1).max(1)

    scores = np.r_[image_scores(good), image_scores(bad)]
    return float(roc_auc_score(np.r_[np.zeros(len(good)), np.ones(len(bad))], scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2400, help="training images per category")
    parser.add_argument("--size", type=int, default=64, help="input size of the backbone")
    parser.add_argument("--draw-size", type=int, default=128, help="size the generator draws at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilons", nargs="+", default=["1", "2", "4", "8", "inf"])
    parser.add_argument("--centres", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--public-images", type=int, default=2)
    parser.add_argument("--test-good", type=int, default=16)
    parser.add_argument("--test-per-defect", type=int, default=6)
    args = parser.parse_args()

    started = time.perf_counter()
    embedder = make_embedder({"name": "efficientnet_lite0", "device": "cpu"}, {"num_threads": 2, "neighbourhood": 3})
    summary = {"centres": args.centres, "rounds": args.rounds, "public_images": args.public_images}
    results: dict[str, dict[str, float]] = {}
    timings = {"draw": 0.0, "embed": 0.0, "summary": 0.0}
    for category in SYNTHETIC_CATEGORIES:
        t0 = time.perf_counter()
        train = _images(category, "train", args.n, args.seed, args.draw_size, args.size)
        good = _images(category, "test/good", args.test_good, args.seed, args.draw_size, args.size)
        bad = np.concatenate(
            [_images(category, f"test/{d}", args.test_per_defect, args.seed, args.draw_size, args.size, d) for d in CATEGORY_DEFECTS[category]]
        )
        t1 = time.perf_counter()
        train_features, good_features, bad_features = (_embed(embedder, x) for x in (train, good, bad))
        t2 = time.perf_counter()
        info = CategoryInfo(category, (args.size, args.size), True)
        base = PrivacySettings.from_parameters({"mechanism": "summary", "summary": summary}, args.seed)
        public = public_summary(info, embedder, base, args.seed, (args.draw_size, args.draw_size))
        patches = train_features.reshape(len(train_features), -1, train_features.shape[-1])
        flat = patches.reshape(-1, patches.shape[-1]).astype(np.float32)

        def plain(queries, bank=flat):
            q = queries.astype(np.float64)
            best = np.full(len(q), np.inf)
            for start in range(0, len(bank), 20000):
                b = bank[start : start + 20000].astype(np.float64)
                d = (q**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * q @ b.T
                best = np.minimum(best, d.min(1))
            return np.sqrt(np.maximum(best, 0))

        results.setdefault("plain PatchCore (all patches)", {})[category] = _auroc(plain, good_features, bad_features)
        results.setdefault("public centres alone", {})[category] = _auroc(
            lambda q, p=public: scaled_distances(q, p.centres, p.radius), good_features, bad_features
        )
        rng = np.random.default_rng()  # OS entropy, as a release
        for epsilon in args.epsilons:
            block = {"mechanism": "summary", "summary": summary}
            if epsilon != "inf":
                block.update(enabled=True, epsilon=float(epsilon))
            settings = PrivacySettings.from_parameters(block, args.seed)
            state = public
            for _ in range(settings.summary.rounds):
                stats = image_statistics(patches, state.centres, settings.summary.residual_clip, settings.summary.contribution_clip)
                vector = stats.to_vector() + (rng.normal(0, settings.sigma, size=stats.to_vector().shape) if settings.sigma else 0)
                pooled = Statistics.from_vector(vector, len(state.centres), state.centres.shape[1])
                state, bank = lloyd_update(state, pooled, settings.sigma, settings.summary)
            results.setdefault(f"summary ε={epsilon}", {})[category] = _auroc(
                lambda q, b=bank: scaled_distances(q, b.centres, b.radius), good_features, bad_features
            )
        timings["draw"] += t1 - t0
        timings["embed"] += t2 - t1
        timings["summary"] += time.perf_counter() - t2
        print(f"{category}: drawn {t1 - t0:.1f} s, embedded {t2 - t1:.1f} s, banks {time.perf_counter() - t2:.1f} s", flush=True)

    print(f"\nn={args.n} per category, {args.draw_size} px drawn -> {args.size} px, seed {args.seed}, "
          f"{args.centres} centres, {args.rounds} rounds, {args.public_images} public images")
    print(f"{'bank':34s} {'mean':>6s}  " + "  ".join(f"{c[:12]:>12s}" for c in SYNTHETIC_CATEGORIES))
    for name, values in results.items():
        print(f"{name:34s} {np.mean(list(values.values())):6.3f}  " + "  ".join(f"{values[c]:12.3f}" for c in SYNTHETIC_CATEGORIES))
    print(f"\nwall {time.perf_counter() - started:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
