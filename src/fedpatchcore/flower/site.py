"""One factory site: its own training images, and what it does with them in a round.

A site reads only its own images, from one of:

* a data folder (deployment: ``flower-supernode --node-config "data-root='...' client-id='...'"``),
  indexed with the project's readers, train split only;
* a training-image table and the category facts (simulation: the table the partition node
  wrote for that client, ``<variant>/client_<id>/training_images.csv``).

The work is the Kedro client lane's, through the same functions of
:mod:`fedpatchcore.core.federation.client`: extract -> local coreset -> upload of a round; with
``experts.enabled`` also the experts' statistics (beside the first upload) and the replies to
their k-means rounds (:mod:`fedpatchcore.core.experts.fitting`). No Flower import here.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks, ClientUpload
from fedpatchcore.core.common.fingerprint import fingerprint
from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.synthetic import MANIFEST_FILE
from fedpatchcore.core.data.types import (
    TRAIN,
    CategoryInfo,
    Sample,
    category_info_from_dict,
    frame_to_samples,
)
from fedpatchcore.core.experts import fitting
from fedpatchcore.core.experts.model import EXPERTS_BLOCK, ExpertSettings
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.features.feature_store import PatchFeatureFile
from fedpatchcore.core.federation import client

logger = logging.getLogger(__name__)

# The server sends every site the client's parameter blocks (core.federation.client.CLIENT_BLOCKS),
# the experts' block (core.experts.model.EXPERTS_BLOCK), the tuned per-category settings (each
# category extracted with its own network, as in-process lanes do) and, of the dataset block,
# what a site needs to read its folder the way the server reads its own.
TUNED_BLOCK = "tuned"
# Written beside a site's kept feature files: each category's patch grid and shallow-stage channels.
FEATURES_INFO = "features.json"
DATASET_KEYS = ("format", "image_sizes")


@dataclass
class Site:
    """A client's own training images (train split, sorted by key) and their category facts."""

    client_id: str
    samples: list[Sample]
    infos: dict[str, CategoryInfo]
    scratch_dir: Path  # where feature files are streamed during a round, removed afterwards

    def __post_init__(self) -> None:
        self.samples = sorted((s for s in self.samples if s.split == TRAIN), key=lambda s: s.key)
        if not self.samples:
            raise ValueError(f"site of client '{self.client_id}' holds no training image")
        self.infos = {c: self.infos[c] for c in sorted({s.category for s in self.samples})}


def _scratch(scratch_dir: str | Path | None) -> Path:
    return Path(scratch_dir) if scratch_dir else Path(tempfile.gettempdir()) / "fedpatchcore_site"


def site_from_folder(
    client_id: str,
    data_root: str | Path,
    dataset: Mapping[str, Any],
    categories: str | Iterable[str] = "all",
    scratch_dir: str | Path | None = None,
) -> Site:
    """Index the site's own dataset folder (same layout and readers as ``dataset.format``)."""
    if isinstance(categories, str) and categories != "all":
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    samples, infos, skipped = index_dataset(
        dataset["format"], data_root, categories, image_sizes=dataset.get("image_sizes") or None
    )
    if skipped:
        logger.warning("client %s: %d unreadable files in %s left out", client_id, len(skipped), data_root)
    return Site(str(client_id), samples, infos, _scratch(scratch_dir))


def site_from_frame(
    client_id: str, training_images: pd.DataFrame, category_info: Mapping[str, Any], scratch_dir: str | Path | None = None
) -> Site:
    infos = {name: category_info_from_dict(info) for name, info in category_info.items()}
    return Site(str(client_id), frame_to_samples(training_images), infos, _scratch(scratch_dir))


def read_training_images(path: str | Path) -> pd.DataFrame:
    """A client's training-image table as the catalog writes it (``<variant>.<client>.training_images``)."""
    return pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)


def site_from_table(
    client_id: str, training_images: str | Path, category_info: str | Path, scratch_dir: str | Path | None = None
) -> Site:
    infos = json.loads(Path(category_info).read_text(encoding="utf-8"))
    return site_from_frame(client_id, read_training_images(training_images), infos, scratch_dir)


def local_coreset_key(site: Site, parameters: Mapping[str, Any]) -> str:
    """What a cached local coreset depends on: the site's images and the client's coreset inputs."""
    images = [s.key for s in site.samples]
    inputs = client.coreset_inputs(parameters, site.client_id)
    return fingerprint(site.client_id, images, inputs, parameters.get(TUNED_BLOCK) or {})


def experts_enabled(parameters: Mapping[str, Any]) -> bool:
    return bool((parameters.get(EXPERTS_BLOCK) or {}).get("enabled", False))


def features_folder(site: Site, parameters: Mapping[str, Any]) -> Path:
    """Where a site keeps its patch features between the k-means rounds of the experts."""
    return site.scratch_dir / f"features_{local_coreset_key(site, parameters)[:16]}"


def build_local_coreset(
    site: Site, parameters: Mapping[str, Any]
) -> tuple[client.LocalCoreset, dict[str, np.ndarray] | None]:
    """Extract the site's patch features and keep its local coreset (the Kedro lane's two steps).

    With ``experts.enabled`` the site also measures its experts' statistics (sent beside the
    coreset) and keeps its feature files in :func:`features_folder` for the k-means rounds that
    follow (older feature folders of the site are removed); otherwise they are deleted at once.
    Returns the local coreset and the statistics (None without experts).
    """
    run_settings = client.ClientSettings.from_run(parameters, site.client_id)
    site.scratch_dir.mkdir(parents=True, exist_ok=True)
    experts = experts_enabled(parameters)
    if experts:
        scratch = features_folder(site, parameters)
        for old in site.scratch_dir.glob("features_*"):
            shutil.rmtree(old, ignore_errors=True)
        scratch.mkdir(parents=True)
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f"flower_{site.client_id}_", dir=site.scratch_dir))
    try:
        features, degraded = client.extract_tuned_features(
            site.samples,
            site.infos,
            parameters["backbone"],
            parameters["extraction"],
            parameters.get(TUNED_BLOCK),
            scratch,
            run_settings,
        )
        if any(entry for entry in degraded):
            logger.info("client %s: simulated heterogeneity %s", site.client_id, run_settings.heterogeneity.describe())
        local = client.select_local_coreset(features, run_settings)
        if not experts:
            return local, None
        shallow = fitting.shallow_channels(features.files, parameters["backbone"], parameters.get(TUNED_BLOCK))
        kept = {  # the files stay where extraction streamed them, inside the kept folder
            category: {
                "file": str(Path(feature_file.path).resolve().relative_to(scratch.resolve())),
                "grid": list(features.grid[category]),
                "shallow_dim": shallow[category],
            }
            for category, feature_file in features.files.items()
        }
        (scratch / FEATURES_INFO).write_text(json.dumps(kept), encoding="utf-8")
        return local, fitting.site_statistics(kept_features(scratch), ExpertSettings.from_parameters(parameters[EXPERTS_BLOCK], parameters["seed"]))
    finally:
        if not experts:
            shutil.rmtree(scratch, ignore_errors=True)


def kept_features(folder: Path) -> dict[str, fitting.SiteFeatures]:
    """The feature files a site kept for the experts' k-means rounds (:func:`build_local_coreset`)."""
    info = json.loads((folder / FEATURES_INFO).read_text(encoding="utf-8"))
    return {
        category: fitting.SiteFeatures(
            PatchFeatureFile(folder / entry["file"], projection_dim=None), tuple(entry["grid"]), int(entry["shallow_dim"])
        )
        for category, entry in info.items()
    }


def expert_round_reply(folder: Path, broadcast: Mapping[str, np.ndarray], parameters: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The site's reply to one k-means round of the experts, from its kept features."""
    if not (folder / FEATURES_INFO).is_file():
        raise FileNotFoundError(f"this site kept no features in {folder} for the experts' rounds (restarted?)")
    return fitting.site_round(kept_features(folder), broadcast, ExpertSettings.from_parameters(parameters[EXPERTS_BLOCK], parameters["seed"]))


def build_generative_data(site: Site, parameters: Mapping[str, Any], categories: Iterable[str]) -> Any:
    """Extract the site's patch features and keep its DP-CVAE training set (``privacy.mechanism: dp_cvae``)."""
    from fedpatchcore.core.federation import generative as fed
    from fedpatchcore.core.privacy import generative as gen

    run_settings = client.ClientSettings.from_run(parameters, site.client_id)
    cvae = gen.CVAESettings.from_parameters((parameters.get("privacy") or {}).get("dp_cvae"))
    site.scratch_dir.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f"flower_{site.client_id}_", dir=site.scratch_dir)
    try:
        embedder = make_embedder(parameters["backbone"], parameters["extraction"])
        features, _ = client.extract_features(site.samples, site.infos, embedder, scratch, run_settings)
        shape = gen.ModelShape.of(embedder.feature_dim, list(categories), cvae)
        return fed.client_data(features, shape, cvae, int(parameters["seed"]), site.client_id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def round_upload(
    local: client.LocalCoreset, client_id: str, parameters: Mapping[str, Any], broadcast: CategoryBanks | None
) -> ClientUpload:
    """What the site sends in a round (round 1: its coreset; later: rows the broadcast bank misses)."""
    return client.build_upload(local, client.ClientSettings.from_run(parameters, client_id), broadcast)


def make_site_folder(
    training_images: pd.DataFrame, folder: str | Path, dataset_root: str | Path | None = None, copy: bool = False
) -> Path:
    """A site's own data folder holding only the images of ``training_images`` (a partition table).

    Images are linked (or copied) into ``<folder>/<category>/train/good/``, the layout the
    readers expect; a synthetic dataset's manifest (the size it was drawn at) comes along. For
    trying the deployment on one machine with the partition the Kedro pipeline made.
    """
    folder = Path(folder)
    for row in training_images.itertuples(index=False):
        source = Path(row.image_path).resolve()
        target = folder / str(row.category) / TRAIN / "good" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if copy:
            shutil.copy2(source, target)
        else:
            target.symlink_to(source)
    if dataset_root is not None and (Path(dataset_root) / MANIFEST_FILE).exists():
        shutil.copy(Path(dataset_root) / MANIFEST_FILE, folder / MANIFEST_FILE)
    return folder
