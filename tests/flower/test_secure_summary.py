"""A summary bank's rounds through Flower's simulation engine under SecAgg+ give the bank the
in-process lanes' sum gives (same noise: a test-only reproducible, not private, setting)."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

pytestmark = pytest.mark.flower


def test_secure_aggregation_over_flower_gives_the_in_process_summary_bank(tiny_dataset, tmp_path):
    banks, metrics = {}, {}
    for engine in ("inprocess", "flower"):
        parameters = project_parameters(
            merged(
                TINY_PARAMS,
                {
                    "extraction": {"scratch_dir": str(tmp_path / engine / "scratch")},
                    "comparison": {"enabled": False},
                    "federation": {"partition": "iid", "num_clients": 3, "engine": engine},
                    "privacy": {
                        "mechanism": "summary",
                        "enabled": True,
                        "epsilon": 4.0,
                        "noise_seed": 1,
                        "reproducible_not_private": True,
                        "ledger_dir": str(tmp_path / engine / "ledger"),
                        "summary": {"centres": 8, "rounds": 2, "public_images": 1},
                    },
                },
            )
        )
        (variant,) = structure.federated_variants(parameters)
        pipe = federated_training(variant) + federated_evaluation(variant)
        names = {n.name for n in pipe.nodes}
        if engine == "flower":
            assert "federated.run_flower_summary" in names and not any("summary_share" in n for n in names)
        keep = ("federated.memory_bank",)
        outputs = run_slice(pipe, memory_catalog(parameters, keep=keep, **tiny_dataset), keep=keep)
        banks[engine] = CategoryBanks.from_arrays(outputs["federated.memory_bank"])
        metrics[engine] = outputs["metrics_federated"]
        # Each simulated site charged its own ledger before its first round.
        assert sorted(p.stem for p in (tmp_path / engine / "ledger").glob("*.jsonl")) == ["1", "2", "3"]

    inprocess, flower = banks["inprocess"], banks["flower"]
    assert set(flower.banks) == set(inprocess.banks)
    for category, centres in inprocess.banks.items():
        assert flower.banks[category].shape == centres.shape
        # SecAgg+ quantises every coordinate to 22 bits of a public bound: far under the noise.
        np.testing.assert_allclose(flower.banks[category], centres, atol=1e-2)
        np.testing.assert_allclose(flower.radius[category], inprocess.radius[category], rtol=1e-3)
    assert metrics["flower"]["mean"]["image_auroc"] == pytest.approx(metrics["inprocess"]["mean"]["image_auroc"], abs=0.02)
    budget = metrics["flower"]["clients"]["1"]["privacy"]
    assert budget["private"] is False and budget["mechanism"] == "summary"
