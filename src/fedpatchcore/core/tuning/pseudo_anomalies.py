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
* ``scratch``: a thin polyline drawn in a colour that contrasts with what lies under it;
* ``remove_part``: a region that stands out from its surroundings (a part, most likely) cut out
  and filled with the surrounding background, as a missing part leaves it;
* ``move_part``: such a region moved elsewhere, its old place filled with background (a part
  in the wrong place).

The first five are structural (the tune pipeline's default, :data:`PSEUDO_ANOMALY_KINDS`); the
two part generators imitate logical defects, which the logical experts' fusion is chosen on
(:data:`PART_PSEUDO_ANOMALY_KINDS`). Both pick their region among several random candidates as
the one whose inside differs most from the ring around it, so on an assembly they take a part
rather than bare carrier.

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
    "KNOWN_PSEUDO_ANOMALY_KINDS",
    "PART_PSEUDO_ANOMALY_KINDS",
    "PSEUDO_ANOMALY_KINDS",
    "PseudoAnomaly",
    "cut_paste",
    "local_blur",
    "local_brightness",
    "make_pseudo_anomalies",
    "make_pseudo_anomaly",
    "move_part",
    "perlin_blend",
    "part_variability",
    "perlin_noise",
    "remove_part",
    "scratch",
]

#: The structural kinds (the tune pipeline's default).
PSEUDO_ANOMALY_KINDS = ("cut_paste", "perlin_blend", "local_blur", "local_brightness", "scratch")
#: Kinds imitating logical defects: a part removed, a part moved.
PART_PSEUDO_ANOMALY_KINDS = ("remove_part", "move_part")
#: Every kind :func:`make_pseudo_anomaly` knows (parameter ``experts.fusion.pseudo_anomaly_kinds``).
KNOWN_PSEUDO_ANOMALY_KINDS = (*PSEUDO_ANOMALY_KINDS, *PART_PSEUDO_ANOMALY_KINDS)
#: Region sizes a part generator tries before it takes the most distinct region.
PART_SIZES = 4
#: Places (on a grid of a quarter of the region's side) compared when a part generator looks for
#: the most distinct region, or for background (or another seat) that fits; a seeded sample of
#: them in large images.
PART_PLACES = 600
#: Part generators search a large image sampled down to about this many pixels on its short side.
SEARCH_SIDE = 128

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


def _band(h: int, w: int) -> int:
    """Width of the ring around an ``h`` x ``w`` rectangle that stands for its surroundings."""
    return max(2, min(h, w) // 4)


def _ring_pixels(image: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray | None:
    """The ring's pixels ``(n, 3)`` in a fixed order (None when the ring leaves the image)."""
    band = _band(h, w)
    height, width = image.shape[:2]
    if y - band < 0 or x - band < 0 or y + h + band > height or x + w + band > width:
        return None
    window = image[y - band : y + h + band, x - band : x + w + band].astype(np.float64)
    inside = np.zeros(window.shape[:2], dtype=bool)
    inside[band : band + h, band : band + w] = True
    return window[~inside]


def _places(
    rng: np.random.Generator, height: int, width: int, h: int, w: int, limit: int
) -> list[tuple[int, int]]:
    """Top-left corners of ``h`` x ``w`` rectangles with their whole ring inside the image, on a
    grid of a quarter of the rectangle's side (at most ``limit`` of them, a seeded sample)."""
    band = _band(h, w)
    ys = np.arange(band, height - h - band + 1, max(1, h // 4))
    xs = np.arange(band, width - w - band + 1, max(1, w // 4))
    places = [(int(y), int(x)) for y in ys for x in xs]
    if len(places) > limit:
        places = [places[i] for i in np.sort(rng.choice(len(places), limit, replace=False))]
    return places


def _distinct_region(
    image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float], variability: np.ndarray | None = None
) -> tuple[int, int, int, int]:
    """``(y, x, h, w)`` of the rectangle whose inside differs most from its ring while the ring
    itself is most uniform (it encloses a part rather than cutting through one) and, given the
    ``variability`` of each pixel over good images, whose inside varies least from one good
    image to the next (a part that is always there, not an optional one), among ``PART_SIZES``
    random sizes at places on a grid."""
    height, width = image.shape[:2]
    pixels = image.astype(np.float64)
    best, best_score = None, -np.inf
    for _ in range(PART_SIZES):
        h, w = _region_size(rng, height, width, *scale)
        for y, x in _places(rng, height, width, h, w, PART_PLACES // PART_SIZES):
            ring = _ring_pixels(image, y, x, h, w)
            background = np.median(ring, axis=0)
            inside = float(np.abs(pixels[y : y + h, x : x + w] - background).mean())
            score = inside - 2.0 * float(np.abs(ring - background).mean())
            if variability is not None:
                score -= 2.0 * float(variability[y : y + h, x : x + w].mean())
            if score > best_score:
                best, best_score = (y, x, h, w), score
    if best is None:  # the image is too small for a ring around any region: take one anyway
        h, w = _region_size(rng, height, width, *scale)
        best = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    return best


def _matching_place(
    image: np.ndarray, rng: np.random.Generator, region: tuple[int, int, int, int], avoid: list[tuple[int, int]]
) -> tuple[int, int] | None:
    """Top-left corner of the place whose surroundings look most like ``region``'s and whose inside
    does not (an empty seat for a seated part), away from ``avoid``; None when nothing fits."""
    y, x, h, w = region
    height, width = image.shape[:2]
    ring = _ring_pixels(image, y, x, h, w)
    if ring is None:
        return None
    pixels = image.astype(np.float64)
    inside = pixels[y : y + h, x : x + w]
    distinct = float(np.abs(inside - np.median(ring, axis=0)).mean())
    best, best_score = None, np.inf
    for ty, tx in _places(rng, height, width, h, w, PART_PLACES):
        if any(abs(ty - ay) < h / 2 and abs(tx - ax) < w / 2 for ay, ax in avoid):
            continue
        if float(np.abs(pixels[ty : ty + h, tx : tx + w] - inside).mean()) < distinct / 2:
            continue  # looks like the part itself: no change
        score = float(np.abs(_ring_pixels(image, ty, tx, h, w) - ring).mean())
        if score < best_score:
            best, best_score = (ty, tx), score
    return best


def _search_stride(image: np.ndarray) -> int:
    """Every how many pixels a large image is sampled for the searches (about 128 on the short side)."""
    return max(1, min(image.shape[:2]) // SEARCH_SIDE)


def _full(box: tuple[int, ...], stride: int, shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """A box found on the sampled image at full resolution (a region clipped to ``shape``)."""
    full = tuple(int(v) * stride for v in box)
    if shape is not None:
        y, x, h, w = full
        full = (y, x, min(h, shape[0] - y), min(w, shape[1] - x))
    return full


def _fill_with_background(
    out: np.ndarray, source: np.ndarray, region: tuple[int, int, int, int], rng: np.random.Generator
) -> None:
    """Fill ``region`` of ``out`` (in place) with background: the inside of the place in ``source``
    whose surroundings match best (:func:`_matching_place`), else the ring's colour and grain."""
    y, x, h, w = region
    stride = _search_stride(source)
    small = source[::stride, ::stride]
    place = _matching_place(small, rng, (y // stride, x // stride, max(1, h // stride), max(1, w // stride)), [(y // stride, x // stride)])
    place = None if place is None else _full(place, stride)
    if place is not None and (place[0] + h > source.shape[0] or place[1] + w > source.shape[1]):
        place = None
    if place is not None:
        out[y : y + h, x : x + w] = source[place[0] : place[0] + h, place[1] : place[1] + w]
        return
    ring = _ring_pixels(source, y, x, h, w)
    around = source.reshape(-1, 3).astype(np.float64) if ring is None else ring
    centre = np.median(around, axis=0)
    grain = 1.4826 * np.median(np.abs(around - centre), axis=0)  # robust std: a part in the ring is ignored
    fill = centre + rng.normal(0.0, 1.0, (h, w, 3)) * grain
    out[y : y + h, x : x + w] = np.clip(np.round(fill), 0, 255).astype(np.uint8)


def part_variability(images: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per pixel, how much good images differ there (mean absolute deviation from their median,
    over the colour channels): low where a fixed part always sits, high where parts come and go.
    None for fewer than two images."""
    if len(images) < 2:
        return None
    stack = np.stack([np.asarray(image, dtype=np.float64) for image in images])
    return np.abs(stack - np.median(stack, axis=0)).mean(axis=(0, 3))


def remove_part(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.08, 0.25),
    min_changed: int | None = None,
    variability: np.ndarray | None = None,
) -> PseudoAnomaly:
    """Take out the most distinct of several random rectangles (a part, most likely) and fill it
    with background: the inside of the place whose surroundings look most like the part's and
    whose inside does not (an empty seat, bare carrier), else the ring's colour and grain.
    What a missing part leaves. ``variability`` (:func:`part_variability` of good images):
    prefer parts that are always there."""
    image = _check_image(image)
    stride = _search_stride(image)
    small_variability = None if variability is None else variability[::stride, ::stride]

    def generate(rng: np.random.Generator) -> np.ndarray:
        coarse = _distinct_region(image[::stride, ::stride], rng, scale, small_variability)
        region = _full(coarse, stride, image.shape)
        out = image.copy()
        _fill_with_background(out, image, region, rng)
        return out

    return _retry(generate, image, rng, min_changed, "remove_part")


def move_part(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.08, 0.25),
    min_changed: int | None = None,
    variability: np.ndarray | None = None,
) -> PseudoAnomaly:
    """Move the most distinct of several random rectangles (as it is: no flip, no re-lighting) to
    the place whose surroundings look most like its own (another seat), and fill its old place
    with background as :func:`remove_part` does. A part in the wrong place. ``variability``: as
    for :func:`remove_part`."""
    image = _check_image(image)
    height, width = image.shape[:2]

    stride = _search_stride(image)
    small = image[::stride, ::stride]
    small_variability = None if variability is None else variability[::stride, ::stride]

    def generate(rng: np.random.Generator) -> np.ndarray:
        coarse = _distinct_region(small, rng, scale, small_variability)
        y, x, h, w = region = _full(coarse, stride, image.shape)
        out = image.copy()
        target = _matching_place(small, rng, coarse, [coarse[:2]])
        target = None if target is None else _full(target, stride)
        if target is None or target[0] + h > height or target[1] + w > width:  # nowhere alike: anywhere
            for _ in range(_MAX_TRIES):
                target = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)))
                if abs(target[0] - y) >= h / 2 or abs(target[1] - x) >= w / 2:
                    break
        _fill_with_background(out, image, region, rng)
        out[target[0] : target[0] + h, target[1] : target[1] + w] = image[y : y + h, x : x + w]
        return out

    return _retry(generate, image, rng, min_changed, "move_part")


# --------------------------------------------------------------------------------------------
# many at once


def make_pseudo_anomaly(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    donor: np.ndarray | None = None,
    variability: np.ndarray | None = None,
) -> PseudoAnomaly:
    """One pseudo-anomaly of ``kind`` (:data:`KNOWN_PSEUDO_ANOMALY_KINDS`); ``donor``: another good
    image; ``variability``: :func:`part_variability` of the good images (the part generators)."""
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
    if kind == "remove_part":
        return remove_part(image, rng, variability=variability)
    if kind == "move_part":
        return move_part(image, rng, variability=variability)
    raise ValueError(f"Unknown pseudo-anomaly kind {kind!r}; choose from {list(KNOWN_PSEUDO_ANOMALY_KINDS)}")


def make_pseudo_anomalies(
    images: np.ndarray | Sequence[np.ndarray],
    seed: int,
    kinds: Sequence[str] = PSEUDO_ANOMALY_KINDS,
    per_image: int = 1,
) -> tuple[list[PseudoAnomaly], list[int]]:
    """``per_image`` pseudo-anomalies of every good image, kinds taken in turn.

    Image ``i``'s ``j``-th anomaly has kind ``kinds[(i * per_image + j) % len(kinds)]``, so
    every kind is used about equally often; cut-paste and Perlin blends take their material
    from the next image (``i + 1``, wrapping round; the image itself when there is only one);
    the part generators prefer parts that sit in every one of ``images`` (:func:`part_variability`).
    Everything derives from ``seed``. Returns the anomalies and, for each, its source index.
    """
    if per_image < 1:
        raise ValueError(f"pseudo_anomalies.per_image must be >= 1, got {per_image}")
    kinds = list(kinds)
    if not kinds:
        raise ValueError("pseudo_anomalies.kinds is empty")
    for kind in kinds:
        if kind not in KNOWN_PSEUDO_ANOMALY_KINDS:
            raise ValueError(
                f"Unknown pseudo-anomaly kind {kind!r}; choose from {list(KNOWN_PSEUDO_ANOMALY_KINDS)}"
            )
    images = [np.asarray(image) for image in images]
    variability = part_variability(images) if set(kinds) & set(PART_PSEUDO_ANOMALY_KINDS) else None
    anomalies, sources = [], []
    for i, image in enumerate(images):
        donor = images[(i + 1) % len(images)]
        for j in range(per_image):
            position = i * per_image + j
            rng = derive_rng(seed, "pseudo_anomaly", position)
            anomalies.append(make_pseudo_anomaly(image, kinds[position % len(kinds)], rng, donor, variability))
            sources.append(i)
    return anomalies, sources
