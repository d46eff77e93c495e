"""Seeded pseudo-anomalies on defect-free images, for choosing settings without test labels.

Each generator takes a uint8 RGB image ``(H, W, 3)`` and a ``numpy`` Generator and returns
a :class:`PseudoAnomaly`: the changed image and a boolean mask that is *exactly* the set of
pixels whose value changed (``mask == (image != original).any(-1)``), so the mask never
claims a pixel that was left alone and never misses one that was altered.

* ``cut_paste``: a rectangle cut from another good image (or the same one) at one place,
  optionally flipped/rotated and re-lit, pasted at another place (Li et al., CutPaste 2021);
* ``perlin_blend``: a Perlin-noise blob filled with a foreign texture blended in
  (Zavrtanik et al., DRAEM 2021);
* ``local_blur`` / ``local_brightness``: an elliptic region blurred, or brightened/darkened;
* ``scratch``: a thin polyline drawn in a colour that contrasts with what lies under it.

Sizes scale with the image (regions of ~6-25 % of the shorter side), so the same seed
gives comparable anomalies at 32 px and at 1000 px. A generator retries with new random
parameters until at least ``min_changed`` pixels changed (a blur of a flat area changes
nothing). Nothing here imports torch or kedro.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from fedpatchcore.core.common.seeding import derive_rng

__all__ = [
    "PSEUDO_ANOMALY_KINDS",
    "PseudoAnomaly",
    "cut_paste",
    "local_blur",
    "local_brightness",
    "make_pseudo_anomalies",
    "make_pseudo_anomaly",
    "perlin_blend",
    "perlin_noise",
    "scratch",
]

#: Every kind :func:`make_pseudo_anomaly` knows (parameter ``validation.pseudo_anomalies.kinds``).
PSEUDO_ANOMALY_KINDS = ("cut_paste", "perlin_blend", "local_blur", "local_brightness", "scratch")

#: Attempts with fresh random parameters before a generator gives up on a visible change.
_MAX_TRIES = 20


@dataclass
class PseudoAnomaly:
    """One pseudo-anomalous image."""

    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # bool (H, W): exactly the pixels that differ from the original
    kind: str


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return image


def _result(original: np.ndarray, changed: np.ndarray, kind: str) -> PseudoAnomaly:
    changed = np.ascontiguousarray(changed, dtype=np.uint8)
    return PseudoAnomaly(changed, (changed != original).any(axis=-1), kind)


def _min_changed(image: np.ndarray, min_changed: int | None) -> int:
    if min_changed is not None:
        return int(min_changed)
    side = min(image.shape[:2])
    return max(4, side // 4)  # a few pixels at 32 px, a short line's worth at 1000 px


def _retry(generate, image: np.ndarray, rng: np.random.Generator, min_changed: int | None, kind: str):
    """Call ``generate(rng)`` until at least ``min_changed`` pixels changed."""
    need = _min_changed(image, min_changed)
    best = None
    for _ in range(_MAX_TRIES):
        result = _result(image, generate(rng), kind)
        count = int(result.mask.sum())
        if count >= need:
            return result
        if best is None or count > int(best.mask.sum()):
            best = result
    if best is None or not best.mask.any():
        raise ValueError(f"{kind}: could not change this image (is it constant?)")
    return best


def _region_size(rng: np.random.Generator, height: int, width: int, lo: float, hi: float) -> tuple[int, int]:
    side = min(height, width)
    h = int(np.clip(round(side * rng.uniform(lo, hi)), 2, height))
    w = int(np.clip(round(side * rng.uniform(lo, hi)), 2, width))
    return h, w


def _ellipse(rng: np.random.Generator, height: int, width: int, lo: float, hi: float) -> np.ndarray:
    """Boolean mask of a random ellipse whose axes are ``lo``-``hi`` of the shorter side."""
    ry, rx = (s / 2.0 for s in _region_size(rng, height, width, lo, hi))
    cy, cx = rng.uniform(ry, height - ry), rng.uniform(rx, width - rx)
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return (u / max(rx, 1.0)) ** 2 + (v / max(ry, 1.0)) ** 2 <= 1.0


# --------------------------------------------------------------------------------------------
# generators


def cut_paste(
    image: np.ndarray,
    rng: np.random.Generator,
    donor: np.ndarray | None = None,
    *,
    scale: tuple[float, float] = (0.08, 0.25),
    min_changed: int | None = None,
) -> PseudoAnomaly:
    """Paste a rectangle cut from ``donor`` (default: ``image`` itself) somewhere else.

    The patch is taken at one random place and pasted at another, at least half a patch
    away, randomly flipped or rotated by 90 degrees and re-lit by up to +-20 %, so it is
    normal material in the wrong place (CutPaste).
    """
    image = _check_image(image)
    donor = image if donor is None else _check_image(donor)
    if donor.shape != image.shape:
        raise ValueError(f"donor shape {donor.shape} differs from image shape {image.shape}")
    height, width = image.shape[:2]

    def generate(rng: np.random.Generator) -> np.ndarray:
        h, w = _region_size(rng, height, width, *scale)
        sy, sx = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        patch = donor[sy : sy + h, sx : sx + w].astype(np.float64)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if h == w and rng.random() < 0.5:
            patch = np.rot90(patch, k=int(rng.integers(1, 4)))
        patch = patch * rng.uniform(0.8, 1.2)
        for _ in range(_MAX_TRIES):  # a destination away from the source
            ty, tx = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            if abs(ty - sy) >= h / 2 or abs(tx - sx) >= w / 2:
                break
        out = image.copy()
        out[ty : ty + h, tx : tx + w] = np.clip(np.round(patch), 0, 255).astype(np.uint8)
        return out

    return _retry(generate, image, rng, min_changed, "cut_paste")


def perlin_noise(
    shape: tuple[int, int], rng: np.random.Generator, cells: tuple[int, int] = (4, 4)
) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` ``(H, W)``, float64 roughly in [-1, 1].

    ``cells`` = lattice cells along (y, x): more cells, finer blobs.
    """
    height, width = int(shape[0]), int(shape[1])
    cy, cx = max(1, int(cells[0])), max(1, int(cells[1]))
    angles = rng.uniform(0, 2 * math.pi, (cy + 1, cx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = np.linspace(0, cy, height, endpoint=False)[:, None] + np.zeros((1, width))
    x = np.linspace(0, cx, width, endpoint=False)[None, :] + np.zeros((height, 1))
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0

    def dot(oy: int, ox: int) -> np.ndarray:
        return gy[y0 + oy, x0 + ox] * (fy - oy) + gx[y0 + oy, x0 + ox] * (fx - ox)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    bottom = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    return (top * (1 - uy) + bottom * uy) * math.sqrt(2)


def perlin_blend(
    image: np.ndarray,
    rng: np.random.Generator,
    texture: np.ndarray | None = None,
    *,
    coverage: tuple[float, float] = (0.02, 0.12),
    opacity: tuple[float, float] = (0.4, 0.9),
    min_changed: int | None = None,
) -> PseudoAnomaly:
    """Blend a foreign texture into a Perlin-noise blob covering ``coverage`` of the image (DRAEM).

    ``texture``: any uint8 image of the same shape (e.g. another good image: it is rolled,
    rotated and re-coloured here so it no longer lines up); default: a colourised noise texture.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    if texture is not None and _check_image(texture).shape != image.shape:
        raise ValueError(f"texture shape {texture.shape} differs from image shape {image.shape}")

    def generate(rng: np.random.Generator) -> np.ndarray:
        side_cells = int(rng.integers(2, 7))
        noise = perlin_noise((height, width), rng, (side_cells, side_cells))
        fraction = rng.uniform(*coverage)
        blob = noise >= np.quantile(noise, 1.0 - fraction)
        if texture is None:
            fine = perlin_noise((height, width), rng, (side_cells * 4, side_cells * 4))
            colour = rng.uniform(0, 255, 3)
            source = np.clip(colour[None, None, :] * (1.0 + 0.5 * fine[:, :, None]), 0, 255)
        else:
            source = np.rot90(texture, k=2).astype(np.float64)
            source = np.roll(source, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))
            source = source[:, :, rng.permutation(3)] * rng.uniform(0.6, 1.4, 3)
        beta = rng.uniform(*opacity)
        out = image.astype(np.float64)
        out[blob] = (1 - beta) * out[blob] + beta * np.clip(source[blob], 0, 255)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    return _retry(generate, image, rng, min_changed, "perlin_blend")


def local_blur(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.1, 0.3),
    sigma: tuple[float, float] = (1.5, 4.0),
    min_changed: int | None = None,
) -> PseudoAnomaly:
    """Gaussian-blur an elliptic region (out-of-focus spot, smeared surface)."""
    image = _check_image(image)
    height, width = image.shape[:2]

    def generate(rng: np.random.Generator) -> np.ndarray:
        region = _ellipse(rng, height, width, *scale)
        s = rng.uniform(*sigma) * max(1.0, min(height, width) / 128.0)
        blurred = gaussian_filter(image.astype(np.float64), sigma=(s, s, 0))
        out = image.copy()
        out[region] = np.clip(np.round(blurred[region]), 0, 255).astype(np.uint8)
        return out

    return _retry(generate, image, rng, min_changed, "local_blur")


def local_brightness(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.1, 0.3),
    delta: tuple[float, float] = (30.0, 80.0),
    min_changed: int | None = None,
) -> PseudoAnomaly:
    """Brighten or darken an elliptic region by ``delta`` grey levels (stain, burn, reflection)."""
    image = _check_image(image)
    height, width = image.shape[:2]

    def generate(rng: np.random.Generator) -> np.ndarray:
        region = _ellipse(rng, height, width, *scale)
        shift = rng.uniform(*delta)
        bright = image[region].mean() > 127 if region.any() else False
        if bright:
            shift = -shift  # darken what is bright, brighten what is dark: a visible change
        out = image.astype(np.float64)
        out[region] += shift
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    return _retry(generate, image, rng, min_changed, "local_brightness")


def scratch(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    length: tuple[float, float] = (0.2, 0.6),
    min_changed: int | None = None,
) -> PseudoAnomaly:
    """Draw a thin polyline (2-4 segments) in a colour contrasting with what lies under it."""
    image = _check_image(image)
    height, width = image.shape[:2]

    def generate(rng: np.random.Generator) -> np.ndarray:
        side = min(height, width)
        total = side * rng.uniform(*length)
        n_segments = int(rng.integers(2, 5))
        points = [(rng.uniform(0, width - 1), rng.uniform(0, height - 1))]
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(n_segments):
            heading += rng.normal(0, 0.5)
            step = total / n_segments
            x = float(np.clip(points[-1][0] + step * math.cos(heading), 0, width - 1))
            y = float(np.clip(points[-1][1] + step * math.sin(heading), 0, height - 1))
            points.append((x, y))
        thickness = max(1, int(round(side / 64 * rng.uniform(0.7, 1.5))))
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).line(points, fill=255, width=thickness)
        line = np.asarray(canvas) > 0
        under = image[line].mean() if line.any() else 127.0
        value = rng.uniform(0, 50) if under > 127 else rng.uniform(205, 255)
        colour = np.clip(value + rng.normal(0, 10, 3), 0, 255)
        out = image.copy()
        out[line] = np.round(colour).astype(np.uint8)
        return out

    return _retry(generate, image, rng, min_changed, "scratch")


# --------------------------------------------------------------------------------------------
# many at once


def make_pseudo_anomaly(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    donor: np.ndarray | None = None,
) -> PseudoAnomaly:
    """One pseudo-anomaly of ``kind`` (:data:`PSEUDO_ANOMALY_KINDS`); ``donor``: another good image."""
    if kind == "cut_paste":
        return cut_paste(image, rng, donor)
    if kind == "perlin_blend":
        return perlin_blend(image, rng, donor)
    if kind == "local_blur":
        return local_blur(image, rng)
    if kind == "local_brightness":
        return local_brightness(image, rng)
    if kind == "scratch":
        return scratch(image, rng)
    raise ValueError(f"Unknown pseudo-anomaly kind {kind!r}; choose from {list(PSEUDO_ANOMALY_KINDS)}")


def make_pseudo_anomalies(
    images: np.ndarray | Sequence[np.ndarray],
    seed: int,
    kinds: Sequence[str] = PSEUDO_ANOMALY_KINDS,
    per_image: int = 1,
) -> tuple[list[PseudoAnomaly], list[int]]:
    """``per_image`` pseudo-anomalies of every good image, kinds taken in turn.

    Image ``i``'s ``j``-th anomaly has kind ``kinds[(i * per_image + j) % len(kinds)]``, so
    every kind is used about equally often; cut-paste and Perlin blends take their material
    from the next image (``i + 1``, wrapping round; the image itself when there is only one).
    Everything derives from ``seed``. Returns the anomalies and, for each, its source index.
    """
    if per_image < 1:
        raise ValueError(f"pseudo_anomalies.per_image must be >= 1, got {per_image}")
    kinds = list(kinds)
    if not kinds:
        raise ValueError("pseudo_anomalies.kinds is empty")
    for kind in kinds:
        if kind not in PSEUDO_ANOMALY_KINDS:
            raise ValueError(
                f"Unknown pseudo-anomaly kind {kind!r}; choose from {list(PSEUDO_ANOMALY_KINDS)}"
            )
    images = [np.asarray(image) for image in images]
    anomalies, sources = [], []
    for i, image in enumerate(images):
        donor = images[(i + 1) % len(images)]
        for j in range(per_image):
            position = i * per_image + j
            rng = derive_rng(seed, "pseudo_anomaly", position)
            anomalies.append(make_pseudo_anomaly(image, kinds[position % len(kinds)], rng, donor))
            sources.append(i)
    return anomalies, sources
