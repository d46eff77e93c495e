"""Public data for the summary bank's starting centres: images no client holds.

A category's public images are, in order of preference:

* ``privacy.summary.public_root``: a folder with one sub-folder per category of defect-free
  images anyone may see (e.g. a vendor's reference photos, "golden samples"): the first
  ``public_images`` PNG/JPEG files of ``<public_root>/<category>/`` (sorted by name);
* for a category of the embedded synthetic generator: its defect-free images drawn from a public
  stream (``seed``, "public_images", category, i): the same generator as the training data
  (which is public code), other images.

They go through the same backbone and public map as every patch, and greedy k-center + Lloyd
on their patch vectors give the K starting centres (:func:`~.summary.public_centres`). They
are public, so using them costs no budget; how close they are to a client's images decides
how much the private rounds still have to add (README "Differential privacy").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.data.synthetic import SYNTHETIC_CATEGORIES, render_image
from fedpatchcore.core.data.types import CategoryInfo
from fedpatchcore.core.privacy.release import PrivacySettings, public_transform
from fedpatchcore.core.privacy.summary import SummaryCategory, public_centres

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def public_images(
    info: CategoryInfo, settings: PrivacySettings, seed: int, drawn_size: tuple[int, int] | None = None
) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 public images of ``info.name`` at ``info.image_size``.

    ``drawn_size``: the size the synthetic generator draws at (then resized), as for the data.
    """
    count = settings.summary.public_images
    width, height = info.image_size
    root = settings.summary.public_root
    if root is not None:
        folder = Path(root) / info.name
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if len(files) < count:
            raise ValueError(
                f"privacy.summary.public_root: {folder} holds {len(files)} image(s), "
                f"privacy.summary.public_images asks for {count}"
            )
        return np.stack(
            [np.asarray(Image.open(f).convert("RGB").resize((width, height), Image.BILINEAR)) for f in files]
        )
    if info.name not in SYNTHETIC_CATEGORIES:
        raise ValueError(
            f"category '{info.name}' has no public images: set privacy.summary.public_root to a folder with "
            f"'{info.name}/' holding at least {count} defect-free images anyone may see"
        )
    size = tuple(drawn_size or info.image_size)
    images = []
    for i in range(count):
        image, _ = render_image(info.name, None, derive_rng(seed, "public_images", info.name, i), size)
        if size != (width, height):
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        images.append(image)
    return np.stack(images)


def public_summary(
    info: CategoryInfo, embedder: Any, settings: PrivacySettings, seed: int, drawn_size: tuple[int, int] | None = None
) -> SummaryCategory:
    """The category's starting centres and public radii, from its public images only."""
    images = public_images(info, settings, seed, drawn_size)
    features = embedder.embed(images)
    vectors = features.reshape(-1, features.shape[-1])
    transform = public_transform(settings, vectors.shape[1])
    if transform is not None:
        vectors = transform(vectors)
    return public_centres(vectors, settings.summary, seed)
