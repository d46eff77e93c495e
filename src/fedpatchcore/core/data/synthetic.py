"""The embedded default dataset: small, procedurally drawn inspection images in AutoVI layout.

Five product categories of clearly different appearance:

* ``metal_plate``   brushed metal (anisotropic streaks) with four mounting holes;
* ``woven_fabric``  a two-colour plain weave;
* ``circuit_board`` a green board with a regular trace grid and components in fixed places;
* ``parts_tray``    a tray whose six recessed slots each hold one part (washer, nut, screw, block);
* ``assembly``      a plain carrier with 6 x 6 identical round seats: half of them (a fixed
  pattern) must hold a cap, the others may (each good assembly fills about half of them). An
  empty seat looks exactly like the seat a missing cap left, and a cap put into the wrong seat
  looks like any other seated cap: only *where* things are tells a logical defect here, so
  PatchCore, which compares each patch with the nearest normal patch anywhere, is blind to them
  (the category the logical experts exist for).

Good images vary a little (lighting gain and gradient, sub-slot jitter, noise, texture).
Defects are structural (``scratch``: thin line; ``stain``: coloured blob; ``dent``: shaded
ellipse) or logical (``missing_*``, ``misplaced_*`` part), each drawn with a randomly varying
subtlety (contrast, size) so that detection is informative rather than trivially perfect.
Ground truth follows AutoVI: ``ground_truth/<defect>/<id>/<nnnn>.png`` holds one channel each
(pixel value = the defect's ``pixel_value`` in ``defects_config.json``); a misplaced part has
two channels, where it should be (``0000``) and where it is (``0001``).

Everything is drawn with numpy from a seed derived from (seed, category, split/defect, index),
so the same settings give byte-identical PNGs, and a subset of categories gives the same
images as the full set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.data.types import GOOD, TEST, TRAIN

logger = logging.getLogger(__name__)

SYNTHETIC_CATEGORIES = ("metal_plate", "woven_fabric", "circuit_board", "parts_tray", "assembly")
SYNTHETIC_IMAGE_SIZE = (128, 128)  # (width, height) the images are drawn at by default
MANIFEST_FILE = "synthetic_manifest.json"
GENERATOR_VERSION = 2

# Defect types per category (2-3 each; logical ones only where parts sit in fixed places).
CATEGORY_DEFECTS = {
    "metal_plate": ("scratch", "dent", "stain"),
    "woven_fabric": ("stain", "scratch"),
    "circuit_board": ("missing_component", "misplaced_component", "scratch"),
    "parts_tray": ("missing_part", "misplaced_part", "stain"),
    "assembly": ("missing_part", "misplaced_part", "stain"),
}

# Value the defect's pixels carry in its ground-truth channel PNGs.
PIXEL_VALUES = {
    "scratch": 255,
    "stain": 254,
    "dent": 253,
    "missing_component": 252,
    "missing_part": 252,
    "misplaced_component": 251,
    "misplaced_part": 251,
}
LOGICAL_DEFECTS = {"missing_component", "missing_part", "misplaced_component", "misplaced_part"}


# --------------------------------------------------------------------------------------------
# drawing helpers (float images in [0, 1], shape (H, W, 3); coordinates are pixel centres)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    return xx.astype(np.float64), yy.astype(np.float64)


def _paint(img: np.ndarray, mask: np.ndarray, color, alpha: float | np.ndarray = 1.0) -> None:
    color = np.asarray(color, dtype=np.float64)
    if np.isscalar(alpha):
        img[mask] = img[mask] * (1.0 - alpha) + color * alpha
    else:
        a = alpha[mask][:, None]
        img[mask] = img[mask] * (1.0 - a) + color * a


def _rect(xx, yy, cx, cy, hx, hy) -> np.ndarray:
    return (np.abs(xx - cx) <= max(hx, 0.5)) & (np.abs(yy - cy) <= max(hy, 0.5))


def _disk(xx, yy, cx, cy, r) -> np.ndarray:
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= max(r, 0.5) ** 2


def _segment(xx, yy, p0, p1, half_width) -> np.ndarray:
    """Pixels whose centre lies within ``half_width`` of the segment p0-p1."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = np.zeros_like(xx) if length2 == 0 else np.clip(((xx - x0) * dx + (yy - y0) * dy) / length2, 0, 1)
    dist2 = (xx - (x0 + t * dx)) ** 2 + (yy - (y0 + t * dy)) ** 2
    return dist2 <= half_width**2


def _lighting(rng, xx, yy, strength: float = 0.08) -> np.ndarray:
    """Per-image gain and a gentle linear gradient (the light is never quite the same)."""
    height, width = xx.shape
    gain = rng.uniform(0.92, 1.08)
    gx, gy = rng.uniform(-strength, strength, 2)
    return gain * (1.0 + gx * (xx / width - 0.5) + gy * (yy / height - 0.5))


def _finish(img: np.ndarray, light: np.ndarray, rng, noise: float) -> np.ndarray:
    img = img * light[:, :, None] + rng.normal(0.0, noise, img.shape)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# structural defects: paint onto an image, return the exact mask of changed pixels


def _scratch(img, rng, xx, yy) -> np.ndarray:
    height, width = xx.shape
    s = min(width, height)
    length = rng.uniform(0.15, 0.45) * s
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    half = rng.uniform(0.6, 1.3) * max(1.0, s / 128)
    mask = _segment(xx, yy, (cx - dx, cy - dy), (cx + dx, cy + dy), half)
    if not mask.any():
        mask[int(cy), int(cx)] = True
    contrast = rng.uniform(0.06, 0.35)
    target = 1.0 if rng.random() < 0.5 else 0.0  # bright (polished) or dark (gouged) line
    _paint(img, mask, (target, target, target), contrast)
    return mask


def _stain(img, rng, xx, yy) -> np.ndarray:
    height, width = xx.shape
    rx = max(1.0, rng.uniform(0.04, 0.12) * width)
    ry = max(1.0, rx * rng.uniform(0.6, 1.4))
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    dx, dy = xx - cx, yy - cy
    theta = np.arctan2(dy, dx)
    phase = rng.uniform(0, 2 * np.pi, 2)
    wobble = 1.0 + 0.15 * np.sin(3 * theta + phase[0]) + 0.08 * np.sin(5 * theta + phase[1])
    rn = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) / wobble
    mask = rn < 1.0
    if not mask.any():
        mask[int(cy), int(cx)] = True
    palette = ((0.55, 0.3, 0.1), (0.12, 0.1, 0.08), (0.3, 0.55, 0.25), (0.2, 0.3, 0.65), (0.7, 0.65, 0.2))
    color = palette[rng.integers(len(palette))]
    strength = rng.uniform(0.2, 0.7)
    alpha = strength * np.clip((1.0 - rn) / 0.35, 0.05, 1.0)
    _paint(img, mask, color, alpha)
    return mask


def _dent(img, rng, xx, yy) -> np.ndarray:
    height, width = xx.shape
    rx = max(1.0, rng.uniform(0.05, 0.12) * width)
    ry = max(1.0, rx * rng.uniform(0.6, 1.4))
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    nx, ny = (xx - cx) / rx, (yy - cy) / ry
    mask = nx**2 + ny**2 < 1.0
    if not mask.any():
        mask[int(cy), int(cx)] = True
    light = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0.04, 0.2)
    # A depression: the side facing the light is in shadow, the far side catches it, plus a rim.
    shade = amp * (np.cos(light) * nx + np.sin(light) * ny) - 0.3 * amp
    img[mask] = np.clip(img[mask] + shade[mask][:, None], 0, 1)
    return mask


STRUCTURAL = {"scratch": _scratch, "stain": _stain, "dent": _dent}


# --------------------------------------------------------------------------------------------
# textured categories


def _metal_plate(rng, xx, yy) -> np.ndarray:
    height, width = xx.shape
    s = min(width, height)
    streak_len = max(3, width // 6)
    noise = rng.standard_normal((height, width + streak_len))
    cum = np.cumsum(noise, axis=1)
    streak = (cum[:, streak_len:] - cum[:, :-streak_len]) / np.sqrt(streak_len)  # brushed along x
    gray = 0.58 + 0.035 * streak + 0.012 * rng.standard_normal((height, width))
    img = gray[:, :, None] * np.array([0.96, 0.99, 1.03])
    for rel_x, rel_y in ((0.1, 0.1), (0.9, 0.1), (0.1, 0.9), (0.9, 0.9)):
        jx, jy = rng.uniform(-0.008, 0.008, 2) * s
        _paint(img, _disk(xx, yy, rel_x * width + jx, rel_y * height + jy, 0.045 * s), (0.12, 0.12, 0.13))
    return img


def _woven_fabric(rng, xx, yy) -> np.ndarray:
    height, width = xx.shape
    period = max(4.0, round(min(width, height) / 14))
    # The camera is triggered on the weave (as on a loom inspection line): only sub-pixel
    # registration jitter. A free phase leaves every border patch position with a handful of
    # training samples per phase, and border noise then outscores every defect.
    phx, phy = rng.uniform(0, 1.0, 2)
    u, v = (xx + phx) / period, (yy + phy) / period
    iu, iv = np.floor(u), np.floor(v)
    over = ((iu + iv) % 2) == 0  # weft on top in half the cells (plain weave)
    weft = np.array([0.76, 0.68, 0.52]) * (0.6 + 0.4 * np.sin(np.pi * (v - iv)))[:, :, None]
    warp = np.array([0.22, 0.3, 0.56]) * (0.6 + 0.4 * np.sin(np.pi * (u - iu)))[:, :, None]
    img = np.where(over[:, :, None], weft, warp)
    return img + 0.005 * rng.standard_normal((height, width))[:, :, None]


# --------------------------------------------------------------------------------------------
# categories with parts in fixed places (logical defects possible)

# (kind, x, y) relative to the image; the board's components sit on fixed pads.
BOARD_LAYOUT = (
    ("ic", 0.30, 0.28),
    ("ic", 0.70, 0.72),
    ("resistor", 0.70, 0.20),
    ("resistor", 0.70, 0.34),
    ("resistor", 0.28, 0.62),
    ("capacitor", 0.28, 0.83),
    ("capacitor", 0.50, 0.50),
    ("led", 0.88, 0.50),
    ("led", 0.12, 0.45),
)
# Copper traces between components, relative end points.
BOARD_TRACES = (
    ((0.41, 0.28), (0.62, 0.28)),
    ((0.62, 0.20), (0.62, 0.34)),
    ((0.30, 0.38), (0.30, 0.58)),
    ((0.28, 0.66), (0.28, 0.78)),
    ((0.33, 0.83), (0.70, 0.83)),
    ((0.55, 0.50), (0.88, 0.50)),
    ((0.12, 0.45), (0.12, 0.12)),
    ((0.12, 0.12), (0.30, 0.12)),
)
TRAY_SLOTS = tuple((x, y) for y in (0.3, 0.7) for x in (0.2, 0.5, 0.8))
TRAY_PARTS = ("washer", "nut", "screw", "block", "nut", "washer")
# The assembly carrier: ASSEMBLY_GRID x ASSEMBLY_GRID identical round seats. The seats of
# ASSEMBLY_MANDATORY (a fixed irregular pattern) always hold a cap; every other seat is optional,
# so that filled and empty seats are each seen beside every kind of neighbourhood in good images.
ASSEMBLY_GRID = 5
ASSEMBLY_MARGIN = 0.14  # plain carrier between the seats and the image border (relative)
ASSEMBLY_PITCH = (1 - 2 * ASSEMBLY_MARGIN) / ASSEMBLY_GRID
ASSEMBLY_SEATS = tuple(
    (ASSEMBLY_MARGIN + (i + 0.5) * ASSEMBLY_PITCH, ASSEMBLY_MARGIN + (j + 0.5) * ASSEMBLY_PITCH)
    for j in range(ASSEMBLY_GRID)
    for i in range(ASSEMBLY_GRID)
)
ASSEMBLY_SEAT_RADIUS = 0.36 * ASSEMBLY_PITCH  # relative to the image's shorter side
ASSEMBLY_MANDATORY = tuple(k for k, bit in enumerate("00000" "01010" "00100" "01010" "00000") if bit == "1")
ASSEMBLY_SHIFT = 0.1  # the carrier sits up to this many seat pitches off its nominal place
ASSEMBLY_OPTIONAL_FILL = 0.5  # chance that an optional seat holds a cap in a good assembly


def _part_layers(kind: str, cx: float, cy: float, s: float, xx, yy, angle: float = 0.0) -> list:
    """The (mask, colour) layers that draw one part; their union is its exact footprint."""
    if kind == "ic":
        body = _rect(xx, yy, cx, cy, 0.11 * s, 0.07 * s)
        period = max(2.0, 0.04 * s)
        pins = _rect(xx, yy, cx, cy, 0.1 * s, 0.095 * s) & ~body & (((xx - cx) % period) < period / 2)
        notch = _disk(xx, yy, cx - 0.075 * s, cy - 0.035 * s, 0.014 * s) & body
        return [(pins, (0.8, 0.8, 0.76)), (body, (0.09, 0.09, 0.1)), (notch, (0.35, 0.35, 0.36))]
    if kind == "resistor":
        body = _rect(xx, yy, cx, cy, 0.055 * s, 0.025 * s)
        layers = [(body, (0.82, 0.72, 0.52))]
        for offset, color in (
            (-0.025, (0.6, 0.1, 0.1)),
            (0.0, (0.45, 0.15, 0.55)),
            (0.025, (0.4, 0.25, 0.1)),
        ):
            layers.append((body & (np.abs(xx - cx - offset * s) <= max(0.5, 0.006 * s)), color))
        return layers
    if kind == "capacitor":
        body = _disk(xx, yy, cx, cy, 0.055 * s)
        return [(body, (0.15, 0.22, 0.55)), (body & (xx - cx > 0.03 * s), (0.75, 0.78, 0.8))]
    if kind == "led":
        body = _rect(xx, yy, cx, cy, 0.025 * s, 0.025 * s)
        return [(body, (0.85, 0.2, 0.15)), (_disk(xx, yy, cx, cy, 0.01 * s) & body, (1.0, 0.6, 0.55))]
    r = 0.08 * s
    dx, dy = xx - cx, yy - cy
    if kind == "washer":
        ring = _disk(xx, yy, cx, cy, r) & ~_disk(xx, yy, cx, cy, 0.4 * r)
        rim = ring & (dx + dy < -0.6 * r)
        return [(ring, (0.82, 0.82, 0.84)), (rim, (0.95, 0.95, 0.96))]
    if kind == "nut":
        h = r * np.sqrt(3) / 2
        hexagon = (np.abs(dy) <= h) & (0.5 * np.abs(dy) + np.abs(dx) * np.sqrt(3) / 2 <= h)
        nut = hexagon & ~_disk(xx, yy, cx, cy, 0.42 * r)
        return [(nut, (0.78, 0.62, 0.26)), (nut & (dy < -0.6 * h), (0.88, 0.74, 0.38))]
    if kind == "screw":
        head = _disk(xx, yy, cx, cy, 0.9 * r)
        slot_mask = head & (np.abs(-np.sin(angle) * dx + np.cos(angle) * dy) <= max(0.5, 0.1 * r))
        return [(head, (0.62, 0.64, 0.68)), (slot_mask, (0.22, 0.22, 0.24))]
    if kind == "block":
        return [(_rect(xx, yy, cx, cy, 0.8 * r, 0.8 * r), (0.72, 0.16, 0.12))]
    if kind == "cap":  # the assembly's part: a dark round cap with a lighter ring and a highlight
        r = ASSEMBLY_SEAT_RADIUS * s
        cap = _disk(xx, yy, cx, cy, 0.85 * r)
        ring = cap & ~_disk(xx, yy, cx, cy, 0.6 * r)
        glint = _disk(xx, yy, cx - 0.3 * r, cy - 0.3 * r, 0.18 * r) & cap
        return [(cap, (0.2, 0.22, 0.26)), (ring, (0.34, 0.36, 0.4)), (glint, (0.7, 0.72, 0.76))]
    raise ValueError(f"unknown part kind {kind!r}")


def _footprint(layers) -> np.ndarray:
    mask = np.zeros_like(layers[0][0])
    for layer, _ in layers:
        mask |= layer
    return mask


def _draw_parts(img, rng, xx, yy, parts, defect: str | None, free_places=None) -> list[np.ndarray]:
    """Draw ``parts`` = [(kind, cx, cy, angle)], applying a logical defect; return its channels.

    ``rng`` is the defect's generator: a good image never draws from it. ``free_places``
    (``[(cx, cy)]``, optional): the empty seats a misplaced part may go into (at the seat's
    centre); without them it is moved by 2-3.5 part radii in a random direction.
    """
    height, width = xx.shape
    s = min(width, height)
    edited = int(rng.integers(len(parts))) if defect in LOGICAL_DEFECTS else -1
    for k, (kind, cx, cy, angle) in enumerate(parts):
        if k != edited:
            for mask, color in _part_layers(kind, cx, cy, s, xx, yy, angle):
                _paint(img, mask, color)
    if edited < 0:
        return []
    kind, cx, cy, angle = parts[edited]
    where_it_should_be = _footprint(_part_layers(kind, cx, cy, s, xx, yy, angle))
    if defect.startswith("missing"):
        return [where_it_should_be]
    if free_places:
        seat_x, seat_y = free_places[int(rng.integers(len(free_places)))]
        layers = _part_layers(kind, seat_x, seat_y, s, xx, yy, angle)
        for mask, color in layers:
            _paint(img, mask, color)
        return [where_it_should_be, _footprint(layers)]
    # misplaced: moved by 2-3.5 part radii in a random direction, kept inside the image
    radius = 0.11 * s
    for _ in range(30):
        direction = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(2.0, 3.5) * radius
        nx = float(np.clip(cx + distance * np.cos(direction), radius, width - 1 - radius))
        ny = float(np.clip(cy + distance * np.sin(direction), radius, height - 1 - radius))
        layers = _part_layers(kind, nx, ny, s, xx, yy, angle + rng.uniform(-0.5, 0.5))
        where_it_is = _footprint(layers)
        if not (where_it_is & where_it_should_be).any():
            break
    for mask, color in layers:
        _paint(img, mask, color)
    return [where_it_should_be, where_it_is]


def _circuit_board(rng, defect_rng, xx, yy, defect):
    height, width = xx.shape
    s = min(width, height)
    img = np.empty((height, width, 3))
    img[:] = (0.08, 0.35, 0.18)
    img += 0.015 * rng.standard_normal((height, width))[:, :, None]
    pitch = max(3.0, s / 10)
    grid = ((xx % pitch) < 1) | ((yy % pitch) < 1)  # regular solder-mask grid
    _paint(img, grid, (0.05, 0.28, 0.14), 0.6)
    for p0, p1 in BOARD_TRACES:
        trace = _segment(
            xx, yy, (p0[0] * width, p0[1] * height), (p1[0] * width, p1[1] * height), 0.5 * max(1, s / 64)
        )
        _paint(img, trace, (0.72, 0.6, 0.28), 0.8)
    pad_sizes = {
        "ic": (0.105, 0.1),
        "resistor": (0.075, 0.03),
        "capacitor": (0.065, 0.03),
        "led": (0.035, 0.02),
    }
    parts = []
    for kind, rel_x, rel_y in BOARD_LAYOUT:
        px, py = rel_x * width, rel_y * height
        hx, hy = pad_sizes[kind]
        _paint(img, _rect(xx, yy, px, py, hx * s, hy * s), (0.7, 0.7, 0.64))
        jx, jy = rng.uniform(-0.008, 0.008, 2) * s
        parts.append((kind, px + jx, py + jy, 0.0))
    channels = _draw_parts(img, defect_rng, xx, yy, parts, defect)
    return img, channels


def _parts_tray(rng, defect_rng, xx, yy, defect):
    height, width = xx.shape
    s = min(width, height)
    img = np.empty((height, width, 3))
    img[:] = (0.5, 0.55, 0.6)
    img += 0.012 * rng.standard_normal((height, width))[:, :, None]
    parts = []
    for (rel_x, rel_y), kind in zip(TRAY_SLOTS, TRAY_PARTS, strict=True):
        px, py = rel_x * width, rel_y * height
        slot = _rect(xx, yy, px, py, 0.12 * s, 0.15 * s)
        _paint(img, slot, (0.33, 0.36, 0.42))
        shadow = slot & ((yy - (py - 0.15 * s)) < max(1.0, 0.025 * s))
        _paint(img, shadow, (0.22, 0.24, 0.28))
        jx, jy = rng.uniform(-0.02, 0.02, 2) * s
        parts.append((kind, px + jx, py + jy, rng.uniform(0, np.pi)))
    channels = _draw_parts(img, defect_rng, xx, yy, parts, defect)
    return img, channels


def _assembly(rng, defect_rng, xx, yy, defect):
    height, width = xx.shape
    s = min(width, height)
    img = np.empty((height, width, 3))
    img[:] = (0.5, 0.58, 0.7)  # a blue anodised carrier
    img += 0.01 * rng.standard_normal((height, width))[:, :, None]
    # The carrier is not registered to the camera: it sits up to ASSEMBLY_SHIFT seat pitches off
    # centre (each cap has a little play in its seat on top of that).
    fx, fy = rng.uniform(-ASSEMBLY_SHIFT, ASSEMBLY_SHIFT, 2) * ASSEMBLY_PITCH * s
    seats = [(rel_x * width + fx, rel_y * height + fy) for rel_x, rel_y in ASSEMBLY_SEATS]
    r = ASSEMBLY_SEAT_RADIUS * s
    for sx, sy in seats:  # every seat looks the same: a darker round recess with a rim
        _paint(img, _disk(xx, yy, sx, sy, 1.05 * r), (0.38, 0.45, 0.56))
        _paint(img, _disk(xx, yy, sx, sy, 0.95 * r), (0.44, 0.51, 0.63))
    mandatory, optional, empty = [], [], []
    for k, (sx, sy) in enumerate(seats):
        jx, jy = rng.uniform(-0.08, 0.08, 2) * r
        if k in ASSEMBLY_MANDATORY:
            mandatory.append(("cap", sx + jx, sy + jy, 0.0))
        elif rng.random() < ASSEMBLY_OPTIONAL_FILL:
            optional.append(("cap", sx + jx, sy + jy, 0.0))
        else:
            empty.append((sx, sy))
    for kind, cx, cy, angle in optional:
        for mask, color in _part_layers(kind, cx, cy, s, xx, yy, angle):
            _paint(img, mask, color)
    # A logical defect concerns a mandatory cap: missing, or put into an empty optional seat.
    channels = _draw_parts(img, defect_rng, xx, yy, mandatory, defect, free_places=empty)
    return img, channels


def render_image(category: str, defect: str | None, rng, image_size: tuple[int, int]):
    """One image of ``category`` (``defect`` None or "good" = defect-free): (uint8 RGB, channels).

    The scene and the defect draw from two generators split off ``rng``, so the same ``rng``
    state gives the same scene with and without the defect (the mask is exactly what changed).
    """
    width, height = image_size
    xx, yy = _grid(width, height)
    defect = None if defect in (None, GOOD) else defect
    if defect is not None and defect not in STRUCTURAL and defect not in LOGICAL_DEFECTS:
        raise ValueError(f"Unknown synthetic defect {defect!r}")
    scene_rng, defect_rng = (np.random.default_rng(int(v)) for v in rng.integers(0, 2**63 - 1, size=2))
    light = _lighting(scene_rng, xx, yy)
    if category == "metal_plate":
        img, channels, noise = _metal_plate(scene_rng, xx, yy), [], 0.006
    elif category == "woven_fabric":
        img, channels, noise = _woven_fabric(scene_rng, xx, yy), [], 0.008
    elif category == "circuit_board":
        (img, channels), noise = _circuit_board(scene_rng, defect_rng, xx, yy, defect), 0.008
    elif category == "parts_tray":
        (img, channels), noise = _parts_tray(scene_rng, defect_rng, xx, yy, defect), 0.008
    elif category == "assembly":
        (img, channels), noise = _assembly(scene_rng, defect_rng, xx, yy, defect), 0.008
    else:
        raise ValueError(f"Unknown synthetic category {category!r}; available: {list(SYNTHETIC_CATEGORIES)}")
    if defect in STRUCTURAL:
        channels = [STRUCTURAL[defect](img, defect_rng, xx, yy)]
    return _finish(np.clip(img, 0, 1), light, scene_rng, noise), channels


# --------------------------------------------------------------------------------------------
# dataset on disk


def _nominal_part_area(category: str, image_size: tuple[int, int]) -> float:
    """Mean footprint (pixels) of the category's parts: the absolute saturation of logical defects."""
    width, height = image_size
    xx, yy = _grid(width, height)
    s = min(width, height)
    if category == "circuit_board":
        placed = [(k, x * width, y * height) for k, x, y in BOARD_LAYOUT]
    elif category == "assembly":
        placed = [("cap", ASSEMBLY_SEATS[k][0] * width, ASSEMBLY_SEATS[k][1] * height) for k in ASSEMBLY_MANDATORY]
    else:
        placed = [(k, x * width, y * height) for (x, y), k in zip(TRAY_SLOTS, TRAY_PARTS, strict=True)]
    areas = [_footprint(_part_layers(k, x, y, s, xx, yy)).sum() for k, x, y in placed]
    return float(np.mean(areas))


def defects_config(category: str, image_size: tuple[int, int]) -> list[dict]:
    """The ``defects_config.json`` entries of a synthetic category (MVTec LOCO semantics)."""
    entries = []
    for defect in CATEGORY_DEFECTS[category]:
        if defect in LOGICAL_DEFECTS:  # saturates once a part's worth of pixels is found
            threshold, relative = round(_nominal_part_area(category, image_size), 1), False
        else:  # saturates only when the whole region is found
            threshold, relative = 1.0, True
        entries.append(
            {
                "defect_name": defect,
                "pixel_value": PIXEL_VALUES[defect],
                "saturation_threshold": threshold,
                "relative_saturation": relative,
            }
        )
    return entries


def _save_png(array: np.ndarray, path: Path, files: list[str], root: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    files.append(path.relative_to(root).as_posix())


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def folder_problem(root: str | Path) -> str | None:
    """Why ``root`` cannot be a folder to write the dataset into (it, or a folder above it, is a
    file), or None. A missing folder is fine: the generator creates it."""
    root = Path(root)
    for path in (root, *root.parents):
        if path.exists():
            if path.is_dir():
                return None
            where = "is a file" if path == root else f"lies under {path}, which is a file"
            return f"{root} {where}: the synthetic dataset is written into a folder (a new one is created)"
    return None


def _checked_settings(
    seed: int, image_size: tuple[int, int], counts: dict[str, int], categories: Iterable[str] | None
) -> dict:
    """The generator's settings as its manifest records them; ValueError naming a bad one."""
    chosen = list(SYNTHETIC_CATEGORIES) if categories is None else [str(c) for c in categories]
    unknown = [c for c in chosen if c not in SYNTHETIC_CATEGORIES]
    if unknown or not chosen:
        raise ValueError(
            f"Unknown synthetic categories {unknown} (or none given); available: {list(SYNTHETIC_CATEGORIES)}"
        )
    width, height = int(image_size[0]), int(image_size[1])
    if width < 8 or height < 8:
        raise ValueError(f"synthetic image_size must be at least 8x8, got {image_size!r}")
    counts = {name: int(value) for name, value in counts.items()}
    if min(counts.values()) < 0 or counts["n_train"] < 1:
        raise ValueError(f"synthetic image counts must be >= 0 (n_train >= 1), got {counts}")
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "image_size": [width, height],
        "categories": [c for c in SYNTHETIC_CATEGORIES if c in chosen],
        **counts,
    }


def _complete_manifest(root: Path, settings: dict) -> dict | None:
    """The manifest of a complete dataset written with exactly ``settings``, else None."""
    manifest = _read_manifest(root)
    if (
        manifest is not None
        and manifest.get("complete")
        and manifest.get("settings") == settings
        and all((root / f).is_file() for f in manifest.get("files", []))
    ):
        return manifest
    return None


def _clear_category_folders(root: Path, chosen: list[str], overwrite: bool) -> None:
    """Delete the folders about to be written and those of an earlier synthetic run; a category
    folder this generator did not write is only deleted with ``overwrite``."""
    manifest = _read_manifest(root)
    ours = set(manifest.get("settings", {}).get("categories", [])) if manifest else set()
    for category in sorted(set(chosen) | ours):
        cat_dir = root / category
        if cat_dir.exists():
            if category not in ours and not overwrite:
                raise FileExistsError(
                    f"{cat_dir} exists and was not written by the synthetic generator; "
                    f"pass overwrite=True to replace it"
                )
            shutil.rmtree(cat_dir)


def _write_category(root: Path, category: str, settings: dict, files: list[str]) -> dict:
    """Every image and ground-truth channel of one category; its counts for the summary."""
    seed = settings["seed"]
    size = tuple(settings["image_size"])
    cat_dir = root / category
    cat_dir.mkdir(parents=True)
    _write_json(cat_dir / "defects_config.json", defects_config(category, size))
    for i in range(settings["n_train"]):
        image, _ = render_image(category, None, derive_rng(seed, category, TRAIN, i), size)
        _save_png(image, cat_dir / TRAIN / GOOD / f"{i:04d}.png", files, root)
    for i in range(settings["n_test_good"]):
        image, _ = render_image(category, None, derive_rng(seed, category, f"{TEST}/{GOOD}", i), size)
        _save_png(image, cat_dir / TEST / GOOD / f"{i:04d}.png", files, root)
    per_defect = {}
    for defect in CATEGORY_DEFECTS[category]:
        for i in range(settings["n_test_per_defect"]):
            rng = derive_rng(seed, category, f"{TEST}/{defect}", i)
            image, channels = render_image(category, defect, rng, size)
            _save_png(image, cat_dir / TEST / defect / f"{i:04d}.png", files, root)
            for c, channel in enumerate(channels):
                gt = (channel.astype(np.uint8) * PIXEL_VALUES[defect]).astype(np.uint8)
                _save_png(gt, cat_dir / "ground_truth" / defect / f"{i:04d}" / f"{c:04d}.png", files, root)
        per_defect[defect] = settings["n_test_per_defect"]
    return {"train": settings["n_train"], "test_good": settings["n_test_good"], "test_defects": per_defect}


def generate_synthetic_dataset(
    root: str | Path,
    seed: int = 0,
    image_size: tuple[int, int] = SYNTHETIC_IMAGE_SIZE,
    n_train: int = 24,
    n_test_good: int = 10,
    n_test_per_defect: int = 5,
    categories: Iterable[str] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the synthetic dataset in AutoVI layout under ``root``; return a summary of counts.

    Returns ``{"root", "settings", "categories": {cat: {"train", "test_good", "test_defects":
    {defect: n}}}, "n_images", "generated"}``. When ``root`` already holds a complete dataset
    written with the same settings (``synthetic_manifest.json``), nothing is rewritten
    (``generated`` False) unless ``overwrite``. Folders of an earlier synthetic run are
    replaced; a category folder not written by this generator is only replaced with ``overwrite``.
    A ``root`` that is a file (:func:`folder_problem`) is an :class:`InputError` naming ``dataset.root``.
    """
    root = Path(root)
    problem = folder_problem(root)
    if problem:
        raise InputError(f"dataset.root: {problem}")
    counts = {"n_train": n_train, "n_test_good": n_test_good, "n_test_per_defect": n_test_per_defect}
    settings = _checked_settings(seed, image_size, counts, categories)
    manifest = None if overwrite else _complete_manifest(root, settings)
    if manifest is not None:
        logger.info("Synthetic dataset in %s is complete and up to date; not rewriting it", root)
        return {**manifest["summary"], "generated": False}

    _clear_category_folders(root, settings["categories"], overwrite)
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / MANIFEST_FILE, {"settings": settings, "complete": False, "files": []})
    files: list[str] = []
    summary_categories = {category: _write_category(root, category, settings, files) for category in settings["categories"]}
    summary = {
        "root": str(root),
        "settings": settings,
        "categories": summary_categories,
        "n_images": sum(
            c["train"] + c["test_good"] + sum(c["test_defects"].values()) for c in summary_categories.values()
        ),
    }
    _write_json(
        root / MANIFEST_FILE, {"settings": settings, "complete": True, "files": files, "summary": summary}
    )
    logger.info("Wrote %d synthetic images to %s", summary["n_images"], root)
    return {**summary, "generated": True}
