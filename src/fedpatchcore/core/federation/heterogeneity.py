"""Heterogeneous factories: per-client image degradations and label noise, seeded and auditable.

The ``heterogeneity`` parameter block maps a client id to what is wrong at that site::

    heterogeneity:
      "1":
        domain_shift: {tint: [1.15, 1.0, 0.85], brightness: 0.08, contrast: 0.8, blur_sigma: 1.0, barrel_k: 0.15}
        noise_sigma: 0.1        # Gaussian pixel noise, std as a fraction of full scale
        motion_blur: 9          # length in pixels of a horizontal motion-blur kernel
        jpeg_quality: 30        # JPEG re-encoding at this quality
        label_noise: 0.15       # share of the client's "good" training images that are defective

Image degradations apply to that client's training images only, as they are read for feature
extraction (nothing is written back), seeded per image, and every image's applied transforms go
into a manifest. Label noise swaps a share of the client's training images for defective test
images of the same category, drawn from a pool that every variant then leaves out of
evaluation, so no variant is scored on an image some client trained on.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from fedpatchcore.core.common.quotas import largest_remainder
from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.data.types import TEST, Sample
from fedpatchcore.core.federation.partition import partition_from_parameters

logger = logging.getLogger(__name__)

DEGRADATION_KEYS = ("domain_shift", "noise_sigma", "motion_blur", "jpeg_quality", "label_noise")
DOMAIN_SHIFT_KEYS = ("tint", "brightness", "contrast", "blur_sigma", "barrel_k")


@dataclass(frozen=True)
class DomainShift:
    """Another camera and lighting: colour cast, exposure, contrast, optics."""

    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain (R, G, B)
    brightness: float = 0.0  # offset as a fraction of full scale
    contrast: float = 1.0  # gain around the image mean
    blur_sigma: float = 0.0  # Gaussian defocus, pixels
    barrel_k: float = 0.0  # radial distortion r -> r (1 + k r^2), r normalised to the half-diagonal


@dataclass(frozen=True)
class ClientHeterogeneity:
    domain_shift: DomainShift | None = None
    noise_sigma: float = 0.0
    motion_blur: int = 0
    jpeg_quality: int | None = None
    label_noise: float = 0.0

    @property
    def degrades_images(self) -> bool:
        return bool(self.domain_shift or self.noise_sigma or self.motion_blur or self.jpeg_quality)

    def describe(self) -> dict[str, Any]:
        """JSON-ready: only what is set."""
        out = {k: v for k, v in asdict(self).items() if v not in (None, 0, 0.0)}
        if self.domain_shift is not None:
            out["domain_shift"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.domain_shift).items()}
        return out


def _number(value: Any, where: str, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if not low <= float(value) <= high:
        raise ValueError(f"{where} must lie in [{low}, {high}], got {value!r}")
    return float(value)


def parse_client(client_id: str, spec: Mapping[str, Any] | None) -> ClientHeterogeneity:
    where = f"heterogeneity.{client_id}"
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(DEGRADATION_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {list(DEGRADATION_KEYS)}")
    shift = None
    if spec.get("domain_shift"):
        values = dict(spec["domain_shift"])
        unknown = sorted(set(values) - set(DOMAIN_SHIFT_KEYS))
        if unknown:
            raise ValueError(f"{where}.domain_shift: unknown keys {unknown}; expected some of {list(DOMAIN_SHIFT_KEYS)}")
        tint = values.get("tint", (1.0, 1.0, 1.0))
        if not isinstance(tint, Sequence) or len(tint) != 3:
            raise ValueError(f"{where}.domain_shift.tint must be three channel gains [r, g, b], got {tint!r}")
        shift = DomainShift(
            tint=tuple(_number(t, f"{where}.domain_shift.tint", 0.0, 4.0) for t in tint),
            brightness=_number(values.get("brightness", 0.0), f"{where}.domain_shift.brightness", -1.0, 1.0),
            contrast=_number(values.get("contrast", 1.0), f"{where}.domain_shift.contrast", 0.0, 4.0),
            blur_sigma=_number(values.get("blur_sigma", 0.0), f"{where}.domain_shift.blur_sigma", 0.0, 50.0),
            barrel_k=_number(values.get("barrel_k", 0.0), f"{where}.domain_shift.barrel_k", -0.5, 1.0),
        )
    jpeg = spec.get("jpeg_quality")
    return ClientHeterogeneity(
        domain_shift=shift,
        noise_sigma=_number(spec.get("noise_sigma", 0.0), f"{where}.noise_sigma", 0.0, 1.0),
        motion_blur=int(_number(spec.get("motion_blur", 0), f"{where}.motion_blur", 0, 200)),
        jpeg_quality=None if jpeg is None else int(_number(jpeg, f"{where}.jpeg_quality", 1, 95)),
        label_noise=_number(spec.get("label_noise", 0.0), f"{where}.label_noise", 0.0, 1.0),
    )


def parse_heterogeneity(block: Mapping[str, Any] | None) -> dict[str, ClientHeterogeneity]:
    """The ``heterogeneity`` parameter block, checked; client ids as strings."""
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise ValueError(f"heterogeneity must map client ids to their degradations, got {block!r}")
    return {str(cid): parse_client(str(cid), spec) for cid, spec in block.items()}


# --------------------------------------------------------------------------- image degradations


def _barrel(image: np.ndarray, k: float) -> np.ndarray:
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    half_diagonal = math.hypot(cy, cx) or 1.0
    dy, dx = (yy - cy) / half_diagonal, (xx - cx) / half_diagonal
    scale = 1.0 + k * (dx * dx + dy * dy)
    coords = [cy + dy * scale * half_diagonal, cx + dx * scale * half_diagonal]
    return np.stack(
        [ndimage.map_coordinates(image[..., c], coords, order=1, mode="reflect") for c in range(image.shape[2])],
        axis=-1,
    )


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def degrade_image(image: np.ndarray, spec: ClientHeterogeneity, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 H×W×3) as this site's camera would see it: optics, lighting, motion, noise, JPEG."""
    if not spec.degrades_images:
        return image
    x = image.astype(np.float64)
    shift = spec.domain_shift
    if shift is not None:
        if shift.barrel_k:
            x = _barrel(x, shift.barrel_k)
        if shift.blur_sigma:
            x = ndimage.gaussian_filter(x, sigma=(shift.blur_sigma, shift.blur_sigma, 0))
        x = x * np.asarray(shift.tint)[None, None, :]
        x = (x - x.mean()) * shift.contrast + x.mean() + 255.0 * shift.brightness
    if spec.motion_blur > 1:
        x = ndimage.uniform_filter1d(x, size=spec.motion_blur, axis=1, mode="reflect")
    if spec.noise_sigma:
        x = x + rng.normal(0.0, 255.0 * spec.noise_sigma, size=x.shape)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if spec.jpeg_quality is not None:
        out = _jpeg(out, spec.jpeg_quality)
    return out


@dataclass
class ImageDegrader:
    """Callable ``(sample, image) -> image`` for the feature extractor, logging what it applied."""

    client_id: str
    spec: ClientHeterogeneity
    seed: int
    manifest: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, sample: Sample, image: np.ndarray) -> np.ndarray:
        if not self.spec.degrades_images:
            return image
        rng = derive_rng(self.seed, "heterogeneity", self.client_id, sample.key)
        self.manifest.append({"image": sample.key, "applied": self.spec.describe()})
        return degrade_image(image, self.spec, rng)


# --------------------------------------------------------------------------- label noise


def label_noise_counts(images_per_category: Mapping[str, int], fraction: float) -> dict[str, int]:
    """How many of a client's training images per category become defective ones.

    ``round(fraction × all its images)`` in total, spread over its categories in proportion
    to their sizes (largest remainder), never more than a category holds.
    """
    categories = sorted(c for c, n in images_per_category.items() if n > 0)
    if not categories or fraction <= 0:
        return {}
    sizes = np.array([images_per_category[c] for c in categories], dtype=np.float64)
    total = min(int(round(fraction * sizes.sum())), int(sizes.sum()))
    counts = np.minimum(largest_remainder(sizes, total), sizes.astype(np.int64))
    return {c: int(n) for c, n in zip(categories, counts, strict=True) if n > 0}


def label_noise_pool(defective_test: Mapping[str, Sequence[str]], needed: Mapping[str, int], seed: int) -> dict[str, list[str]]:
    """Per category, the defective test images set aside for label noise (``needed`` of them)."""
    pool = {}
    for category, count in sorted(needed.items()):
        keys = sorted(defective_test.get(category, ()))
        if count > len(keys):
            raise ValueError(
                f"label noise needs {count} defective '{category}' images but the test split has {len(keys)}: "
                "lower heterogeneity.<client>.label_noise"
            )
        order = derive_rng(seed, "label_noise_pool", category).permutation(len(keys))
        pool[category] = [keys[i] for i in order[:count]]
    return pool


def reserve_label_noise(
    samples: Sequence[Sample],
    variants: Mapping[str, Mapping[str, Any]],
    held_out: Mapping[str, set[str]],
    seed: int,
) -> dict[str, list[str]]:
    """The defective test images label noise puts into training sets, in any variant of a run.

    ``variants``: each variant's resolved parameters (``heterogeneity``, ``federation``,
    ``seed``); ``held_out``: per variant, the training images its validation split keeps out of
    the partition. A category's pool is as large as the most any variant needs, so every variant
    draws from one pool and evaluation can leave the same images out of all of them.
    """
    category_of = {s.key: s.category for s in samples}
    needed: dict[str, int] = {}
    for name, parameters in variants.items():
        specs = parse_heterogeneity(parameters.get("heterogeneity"))
        if not any(spec.label_noise for spec in specs.values()):
            continue
        partitioned = [s for s in samples if s.key not in held_out.get(name, set())]
        for client_id, keys in partition_from_parameters(partitioned, parameters["federation"], parameters["seed"]).items():
            spec = specs.get(str(client_id))
            if spec is None or not spec.label_noise:
                continue
            per_category: dict[str, int] = {}
            for key in keys:
                per_category[category_of[key]] = per_category.get(category_of[key], 0) + 1
            for category, count in label_noise_counts(per_category, spec.label_noise).items():
                needed[category] = max(needed.get(category, 0), count)
        logger.info("Variant %s: label noise needs %s defective images per category", name, needed)
    defective: dict[str, list[str]] = {}
    for s in samples:
        if s.split == TEST and s.label == 1:
            defective.setdefault(s.category, []).append(s.key)
    return label_noise_pool(defective, needed, seed)


def choose_label_noise(
    pool: Mapping[str, Sequence[str]], counts: Mapping[str, int], client_id: str, seed: int
) -> dict[str, list[str]]:
    """The pool images a client trains on (a seeded draw per client and category)."""
    chosen = {}
    for category, count in sorted(counts.items()):
        keys = list(pool.get(category, ()))
        if count > len(keys):
            raise ValueError(f"label-noise pool of '{category}' holds {len(keys)} images, client {client_id} needs {count}")
        order = derive_rng(seed, "label_noise", client_id, category).permutation(len(keys))
        chosen[category] = [keys[i] for i in order[:count]]
    return chosen


def apply_label_noise(
    assignment: Mapping[str, Sequence[str]],
    samples: Sequence[Sample],
    specs: Mapping[str, ClientHeterogeneity],
    pool: Mapping[str, Sequence[str]],
    seed: int,
) -> tuple[dict[str, list[str]], dict[str, dict[str, dict[str, list[str]]]]]:
    """Each noisy client's training keys with a share of its images swapped for defective ones.

    Returns the new assignment and, per noisy client and category, which of its images were
    ``removed`` (they are not used anywhere) and which defective test images were ``added``.
    """
    category_of = {s.key: s.category for s in samples}
    noisy = dict(assignment)
    swaps: dict[str, dict[str, dict[str, list[str]]]] = {}
    for client_id, keys in assignment.items():
        spec = specs.get(str(client_id))
        if spec is None or spec.label_noise <= 0:
            continue
        by_category: dict[str, list[str]] = {}
        for key in sorted(keys):
            by_category.setdefault(category_of[key], []).append(key)
        counts = label_noise_counts({c: len(k) for c, k in by_category.items()}, spec.label_noise)
        added = choose_label_noise(pool, counts, str(client_id), seed)
        kept, swaps[str(client_id)] = [], {}
        for category, own in by_category.items():
            count = counts.get(category, 0)
            order = derive_rng(seed, "label_noise_removed", str(client_id), category).permutation(len(own))
            removed = sorted(own[i] for i in order[:count])
            kept.extend(k for k in own if k not in set(removed))
            if count:
                swaps[str(client_id)][category] = {"removed": removed, "added": added[category]}
        noisy[client_id] = sorted(kept + [k for keys_ in added.values() for k in keys_])
    return noisy, swaps
