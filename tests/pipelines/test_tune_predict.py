"""Issue 14 wired: the tune and predict pipelines, per-category tuned settings, the validation split.

Slices run in memory with the SequentialRunner (tests/pipelines/test_variants.py style).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
from fedpatchcore.core.data.types import TEST, TRAIN, category_info_to_dict, samples_to_frame
from fedpatchcore.core.features.setting import Setting
from fedpatchcore.params_schema import parameter_problems
from fedpatchcore.pipeline_registry import create_pipelines
from fedpatchcore.pipelines.evaluation.pipeline import centralized_evaluation
from fedpatchcore.pipelines.federated.pipeline import partition_pipeline
from fedpatchcore.pipelines.ingest import nodes as ingest_nodes
from fedpatchcore.pipelines.predict import nodes as predict_nodes
from fedpatchcore.pipelines.predict.pipeline import create_pipeline as predict_pipeline
from fedpatchcore.pipelines.training.pipeline import centralized_training
from fedpatchcore.pipelines.tune.pipeline import create_pipeline as tune_pipeline
from tests.core.tuning.test_tuner import _forbid_test_files
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

CATEGORIES = ["metal_plate", "parts_tray"]


def _parameters(tmp_path, **override):
    runtime = merged(TINY_PARAMS, {"extraction": {"scratch_dir": str(tmp_path / "scratch")}, **override})
    return project_parameters(runtime)


def _centralized(parameters, data, keep=()):
    pipe = centralized_training() + centralized_evaluation()
    return run_slice(pipe, memory_catalog(parameters, keep=keep, **data), keep=keep)


# --------------------------------------------------------------------------- defaults unchanged


def test_new_keys_default_to_todays_behaviour():
    parameters = project_parameters()
    assert parameters["backbone"]["layers"] is None
    assert parameters["scoring"]["image_score"] == "max" and parameters["scoring"]["topk"] == 10
    assert parameters["tuned"] == {} and parameters["validation"]["enabled"] is False
    assert parameter_problems(parameters) == []


def test_tuned_entry_equal_to_the_default_reproduces_the_default_bit_for_bit(tiny_dataset, tmp_path):
    """The per-category path with the default's own setting gives exactly the default run."""
    parameters = _parameters(tmp_path)
    default = _centralized(parameters, tiny_dataset, keep=("centralized.image_scores",))
    size = tiny_dataset["category_info"]["metal_plate"]["image_size"]
    entry = Setting(image_size=tuple(size)).to_params()
    tuned = _centralized(
        _parameters(tmp_path, tuned={"metal_plate": entry}), tiny_dataset, keep=("centralized.image_scores",)
    )
    pd.testing.assert_frame_equal(default["centralized.image_scores"], tuned["centralized.image_scores"])
    a, b = default["metrics_centralized"], tuned["metrics_centralized"]
    assert a["categories"] == b["categories"]
    assert "tuned" not in a and set(b["tuned"]) == {"metal_plate"}


def test_a_tuned_category_runs_with_its_own_backbone_size_and_score(tiny_dataset, tmp_path):
    entry = Setting("efficientnet_lite2", image_size=(48, 48), image_score="topk_mean", topk=3).to_params()
    parameters = _parameters(tmp_path, tuned={"parts_tray": entry})
    assert parameter_problems(parameters) == []
    out = _centralized(parameters, tiny_dataset, keep=("centralized.memory_bank", "centralized.anomaly_maps"))
    banks = CategoryBanks.from_arrays(out["centralized.memory_bank"]).banks
    assert banks["parts_tray"].shape[1] == 168  # lite2: 48 + 120 channels
    assert {b.shape[1] for c, b in banks.items() if c != "parts_tray"} == {152}  # lite0 for the rest
    maps = out["centralized.anomaly_maps"]["parts_tray"]["maps"]
    width, height = tiny_dataset["category_info"]["parts_tray"]["image_size"]
    assert maps.shape[1:] == (height, width)  # resized back to where ground truth and report read it
    metrics = out["metrics_centralized"]
    assert metrics["tuned"]["parts_tray"]["setting"] == "efficientnet_lite2@48x48/topk_mean(k=3)"


def test_a_federated_run_scores_each_category_with_its_own_backbone(tiny_dataset, tmp_path):
    """Two categories on two networks in one federation: every client extracts a category with its
    setting, the server merges each category at its own dimension, scoring uses each one's network."""
    from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training

    entry = Setting("efficientnet_lite2", image_size=(48, 48)).to_params()
    parameters = _parameters(
        tmp_path,
        tuned={"parts_tray": entry},
        comparison={"enabled": False},
        federation={"partition": "iid", "num_clients": 2},
    )
    assert parameter_problems(parameters) == []
    (variant,) = structure.federated_variants(parameters)
    keep = ("federated.memory_bank", "federated.anomaly_maps", "federated.client_1.upload_round_1", "federated.round_1_report")
    out = run_slice(
        federated_training(variant) + federated_evaluation(variant),
        memory_catalog(parameters, keep=keep, **tiny_dataset),
        keep=keep,
    )
    upload = CategoryBanks.from_arrays(
        {k: v for k, v in out["federated.client_1.upload_round_1"].items() if k.startswith(("bank/", "n_images/"))}
    )
    banks = CategoryBanks.from_arrays(out["federated.memory_bank"]).banks
    for held in (upload.banks, banks):
        assert held["parts_tray"].shape[1] == 168  # lite2: 48 + 120 channels
        assert {b.shape[1] for c, b in held.items() if c != "parts_tray"} == {152}  # lite0
    report = out["federated.round_1_report"]
    assert report["rejected"] == {} and report["dim"]["parts_tray"] == 168
    maps = out["federated.anomaly_maps"]["parts_tray"]["maps"]
    width, height = tiny_dataset["category_info"]["parts_tray"]["image_size"]
    assert maps.shape[1:] == (height, width)
    assert out["metrics_federated"]["categories"]["parts_tray"]["image_auroc"] is not None


def test_backbone_layers_parameter_reaches_the_network(tiny_dataset, tmp_path):
    parameters = _parameters(tmp_path, backbone={"layers": ["stage2", "stage4"]})
    out = _centralized(parameters, tiny_dataset, keep=("centralized.memory_bank",))
    dims = {b.shape[1] for b in CategoryBanks.from_arrays(out["centralized.memory_bank"]).banks.values()}
    assert dims == {24 + 80}  # lite0 stage2 (24 channels) + stage4 (80)


# --------------------------------------------------------------------------- the validation split


def test_validation_split_is_held_out_of_every_training_set(tiny_dataset, tmp_path):
    parameters = _parameters(tmp_path, validation={"enabled": True}, comparison={"enabled": False})
    index = tiny_dataset["dataset_index"]
    split = ingest_nodes.make_validation_split(index, parameters["validation"], parameters["seed"])
    held_out = set(split.loc[split["role"] == "validation", "key"])
    assert held_out and set(split["key"]) == set(index.loc[index["split"] == TRAIN, "key"])
    (variant,) = structure.federated_variants(parameters)
    out = run_slice(
        partition_pipeline(variant) + centralized_training().only_nodes("centralized.hold_all_training_images"),
        memory_catalog(parameters, keep=("federated.partition",), **tiny_dataset),
        keep=("federated.partition",),
    )
    partitioned = {k for keys in out["federated.partition"].values() for k in keys}
    assert partitioned and not partitioned & held_out
    assert not set(out["centralized.training_images"]["key"]) & held_out
    # disabled (the default): nothing is held out
    assert ingest_nodes.make_validation_split(index, {"enabled": False, "fraction": 0.2}, 0).empty


# --------------------------------------------------------------------------- tune


def test_tune_pipeline_never_opens_a_test_image(tiny_dataset, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    parameters = _parameters(
        tmp_path,
        tune={
            "backbones": ["efficientnet_lite0"],
            "image_sizes": [None, [48, 48]],
            "scorings": [{"image_score": "max"}, {"image_score": "topk_mean", "topk": 3}],
            "pseudo_anomalies_per_image": 2,
        },
    )
    assert parameter_problems(parameters) == []
    opened = _forbid_test_files(monkeypatch)
    data = {k: tiny_dataset[k] for k in ("dataset_index", "category_info")}  # test rows included
    out = run_slice(tune_pipeline(), memory_catalog(parameters, keep=("validation_split",), **data), keep=("validation_split",))
    index = tiny_dataset["dataset_index"]
    train_paths = set(index.loc[index["split"] == TRAIN, "image_path"])
    assert train_paths & set(opened), "the guard saw no image: it would not catch a test image either"
    table = out["tune_table"]
    assert list(table.columns[:4]) == ["category", "setting", "val_auroc", "chosen"]
    n_categories = index["category"].nunique()
    assert len(table) == n_categories * 4 and (table.groupby("category")["chosen"].sum() == 1).all()
    assert table["setting"].iloc[0] == "efficientnet_lite0@default/max"  # the run's own setting first
    tuned = out["tuned_parameters"]
    assert set(tuned["tuned"]) == set(index["category"])
    assert parameter_problems(project_parameters(merged(TINY_PARAMS, tuned))) == []
    assert all(f"## {c}" in out["tune_report"] for c in tuned["tuned"])
    split = out["validation_split"]
    assert set(split["role"]) == {"bank", "validation"}
    assert set(split["key"]) <= set(index.loc[index["split"] == TRAIN, "key"])


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def inspection_dataset(tmp_path_factory):
    """Two categories, enough good images to measure a false-alarm rate (20 validation, 30 test)."""
    root = tmp_path_factory.mktemp("inspection") / "synthetic"
    generate_synthetic_dataset(
        root, seed=1, image_size=(64, 64), n_train=40, n_test_good=30, n_test_per_defect=4, categories=CATEGORIES
    )
    samples, infos, _ = index_dataset("synthetic", root, "all")
    index = samples_to_frame(samples)
    return root, {
        "dataset_index": index,
        "category_info": {n: category_info_to_dict(i) for n, i in infos.items()},
        "label_noise_pool": {},
        "evaluation_index": index,
    }


@pytest.fixture(scope="module")
def centralized_with_validation(inspection_dataset, tmp_path_factory):
    root, data = inspection_dataset
    scratch = tmp_path_factory.mktemp("scratch")
    parameters = project_parameters(
        merged(TINY_PARAMS, {"extraction": {"scratch_dir": str(scratch)}, "validation": {"enabled": True, "fraction": 0.5}})
    )
    split = ingest_nodes.make_validation_split(data["dataset_index"], parameters["validation"], parameters["seed"])
    keep = ("centralized.memory_bank", "centralized.training_images")
    out = run_slice(centralized_training(), memory_catalog(parameters, keep=keep, **data), keep=keep)
    return root, data, split, out, parameters


def _predict(parameters, data, split, trained, tmp_path, **predict):
    parameters = {
        **parameters,
        "predict": {**parameters["predict"], "variant": "centralized", "output_dir": str(tmp_path / "out"), **predict},
    }
    datasets = {
        "dataset_index": data["dataset_index"],
        "category_info": data["category_info"],
        "validation_split": split,
        **{name: trained[name] for name in ("centralized.memory_bank", "centralized.training_images")},
    }
    keep = ("predict.thresholds",)
    return run_slice(predict_pipeline(parameters), memory_catalog(parameters, keep=keep, **datasets), keep=keep)


def test_predict_on_a_test_folder_flags_defects_at_the_calibrated_false_alarm_rate(
    centralized_with_validation, tmp_path
):
    torch.set_num_threads(1)
    root, data, split, trained, parameters = centralized_with_validation
    target = 0.2
    out = _predict(
        parameters, data, split, trained, tmp_path, input=str(root), pattern="*/test/*/*", max_false_alarm_rate=target
    )
    frame = out["predict.predictions"]
    assert list(frame.columns[:4]) == ["image", "category", "score", "label"]
    index = data["dataset_index"]
    assert len(frame) == int((index["split"] == TEST).sum())
    assert (frame["category"] == frame["image"].str.split("/").str[0]).all()  # category from the path
    good = frame["image"].str.contains("/test/good/")
    far = float((frame.loc[good, "label"] == "NOK").mean())
    recall = float((frame.loc[~good, "label"] == "NOK").mean())
    thresholds = out["predict.thresholds"]
    assert all(t["n_good"] == 20 and t["guaranteed"] for t in thresholds.values())
    # conformal at 0.2 with 20 good validation images: about 0.14-0.2 expected; 60 good test images
    assert far <= target + 0.15, far
    assert recall >= 0.6 and recall > far, (recall, far)
    masks = list((tmp_path / "out" / "masks").rglob("*.png"))
    overlays = list((tmp_path / "out" / "overlays").rglob("*.png"))
    assert len(masks) == len(overlays) == len(frame)


def test_predict_lists_unreadable_images_and_notes_sizes_it_was_not_trained_at(centralized_with_validation, tmp_path):
    # Unreadable images used to be dropped from predictions.csv (a log line only), and an image of
    # another size was resized and given a category by best fit without a word.
    torch.set_num_threads(1)
    root, data, split, trained, parameters = centralized_with_validation
    inbox = tmp_path / "inbox"
    (inbox / "metal_plate").mkdir(parents=True)
    shutil.copy(root / "metal_plate" / "test" / "good" / "0000.png", inbox / "metal_plate" / "as_trained.png")
    (inbox / "metal_plate" / "broken.png").write_bytes(b"not an image")
    with Image.open(root / "parts_tray" / "test" / "good" / "0000.png") as image:
        image.resize((96, 80)).save(inbox / "bigger.png")  # flat: its category is the best fit
    frame = _predict(parameters, data, split, trained, tmp_path, input=str(inbox))["predict.predictions"].set_index("image")
    assert list(frame.index) == ["bigger.png", "metal_plate/as_trained.png", "metal_plate/broken.png"]
    assert frame.loc["metal_plate/broken.png", ["label", "category", "category_from"]].tolist() == [
        "UNREADABLE",
        "metal_plate",
        "folder",
    ]
    assert "broken.png" in frame.loc["metal_plate/broken.png", "note"]
    same = frame.loc["metal_plate/as_trained.png"]
    assert (same["width"], same["height"], same["category_from"], same["note"]) == (64, 64, "folder", "")
    bigger = frame.loc["bigger.png"]
    assert (bigger["width"], bigger["height"], bigger["category_from"]) == (96, 80, "best fit")
    assert bigger["note"].startswith(f"image is 96x80 but {bigger['category']}'s training images are 64x64")


def test_calibration_never_reads_a_test_image_or_label(centralized_with_validation, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    root, data, split, trained, parameters = centralized_with_validation
    index = data["dataset_index"]
    scrambled = index.copy()
    test = scrambled["split"] == TEST
    scrambled.loc[test, "label"] = np.random.default_rng(0).permutation(scrambled.loc[test, "label"].to_numpy())
    scrambled.loc[test, "image_path"] = "/nonexistent/test/image.png"
    scrambled.loc[test, "defect_type"] = "poison"
    opened = _forbid_test_files(monkeypatch)
    # only the build and calibration nodes: the prediction itself reads the input folder (test images here)
    parameters = {**parameters, "predict": {**parameters["predict"], "variant": "centralized"}}
    pipe = predict_pipeline(parameters).to_nodes("predict.calibrate_thresholds")
    thresholds = []
    for frame in (index, scrambled, index.loc[~test]):
        datasets = {
            "dataset_index": frame,
            "category_info": data["category_info"],
            "validation_split": split,
            **{name: trained[name] for name in ("centralized.memory_bank", "centralized.training_images")},
        }
        thresholds.append(run_slice(pipe, memory_catalog(parameters, **datasets))["predict.thresholds"])
    assert thresholds[0] == thresholds[1] == thresholds[2]
    assert opened and not any("/test/" in p for p in opened)


def test_predict_refuses_without_a_held_out_validation_split(centralized_with_validation, tmp_path):
    root, data, split, trained, parameters = centralized_with_validation
    empty = split.iloc[0:0]
    with pytest.raises(Exception, match="validation.enabled"):
        _predict(parameters, data, empty, trained, tmp_path, input=str(root))
    # a bank trained on the validation images cannot calibrate on them
    leaked = {**trained, "centralized.training_images": data["dataset_index"].loc[data["dataset_index"]["split"] == TRAIN]}
    with pytest.raises(Exception, match="trained without this validation split"):
        _predict(parameters, data, split, leaked, tmp_path, input=str(root))


def test_predict_and_tune_are_registered():
    pipelines = create_pipelines(project_parameters())
    assert {"tune", "predict"} <= set(pipelines)
    predict = pipelines["predict"]
    assert "federated.memory_bank" in predict.inputs() and "federated.partition" in predict.inputs()
    assert not any(name.startswith("params:") and "test" in name for name in predict.inputs())
    # thresholds read no test-derived dataset: only the bank, the index's training rows and the split
    calibrate = next(n for n in predict.nodes if n.name == "predict.calibrate_thresholds")
    assert not {"evaluation_index", "federated.image_scores", "federated.metrics"} & set(calibrate.inputs)
    assert predict_nodes.RETRAIN
