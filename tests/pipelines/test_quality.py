"""Detection quality the pipelines must keep on the embedded default dataset.

These checks fail for a randomly initialised backbone (mean image AUC-ROC about 0.71 here) or an
aggregation that loses a category's normal patches, unlike "the metric lies in [0, 1]".
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.data.types import TEST, category_info_from_dict, frame_to_samples
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.scoring.category import SearchBatches, score_category
from fedpatchcore.core.scoring.patch_scores import PatchScorer
from fedpatchcore.pipelines.evaluation.pipeline import evaluation
from fedpatchcore.pipelines.federated.pipeline import federated_training
from fedpatchcore.pipelines.training.pipeline import centralized_training
from tests.pipelines.conftest import memory_catalog, project_parameters, run_slice

# Measured with seed 0: centralized 0.884, federated by category 0.853 (see the README); the floors
# leave room for numeric noise across machines, not for a broken stage.
FLOORS = {"centralized": 0.86, "federated": 0.83}


@pytest.fixture(scope="module")
def default_run(default_dataset, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch")
    parameters = project_parameters({"extraction": {"scratch_dir": str(scratch)}, "comparison": {"enabled": False}})
    (main,) = structure.federated_variants(parameters)
    banks = run_slice(centralized_training() + federated_training(main), memory_catalog(parameters, **default_dataset))
    evaluated = run_slice(
        evaluation("centralized") + evaluation("federated"),
        memory_catalog(
            parameters,
            **default_dataset,
            **{name: banks[name] for name in ("centralized.memory_bank", "federated.memory_bank")},
        ),
    )
    return parameters, banks, evaluated


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["centralized", "federated"])
def test_default_dataset_stays_above_its_known_good_floor(default_run, variant):
    _, _, evaluated = default_run
    metrics = evaluated[f"{variant}.metrics"]
    textured = {"metal_plate", "woven_fabric", "circuit_board", "parts_tray"}
    assert set(metrics["categories"]) == textured | {"assembly"}
    # assembly is built so that PatchCore alone misses its logical defects: the floors are the
    # four other categories' (their numbers are bit-identical to before assembly existed).
    categories = [metrics["categories"][c] for c in sorted(textured)]
    assert sum(c["image_auroc"] for c in categories) / len(categories) >= FLOORS[variant]
    assert sum(c["aucspro"]["0.3"] for c in categories) / len(categories) >= 0.8


@pytest.mark.slow
def test_a_planted_defect_scores_above_every_good_image(default_run, default_dataset, tmp_path):
    parameters, banks, _ = default_run
    bank = CategoryBanks.from_arrays(banks["federated.memory_bank"])
    embedder = make_embedder(parameters["backbone"], parameters["extraction"])
    for category, info in default_dataset["category_info"].items():
        info = category_info_from_dict(info)
        goods = [
            s for s in frame_to_samples(default_dataset["dataset_index"])
            if s.category == category and s.split == TEST and s.label == 0
        ]
        planted = []
        for sample in goods:
            image = np.array(Image.open(sample.image_path).convert("RGB"))
            image[40:56, 60:76] = (255, 0, 255)  # a magenta patch: nothing like it in any training image
            path = tmp_path / f"{category}_{sample.image_id}.png"
            Image.fromarray(image).save(path)
            planted.append(type(sample)(**{**sample.__dict__, "image_path": str(path), "defect_type": "planted"}))
        index = build_index(bank.banks[category])
        scores = [
            score_category(group, info, embedder, index, PatchScorer(sigma=4.0), search=SearchBatches(8, num_workers=0))
            .image_scores
            for group in (goods, planted)
        ]
        assert scores[1].min() > scores[0].max(), category
