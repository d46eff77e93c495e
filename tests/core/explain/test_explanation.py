"""One explanation without Kedro: which image and category, which client may ask, and the rule
that only the asking client's pixels are shown."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.data.types import TEST, CategoryInfo, Sample
from fedpatchcore.core.explain.attribution import RowProvenance, patch_crop
from fedpatchcore.core.explain.explanation import (
    QUERY,
    AskingClient,
    BankSources,
    ExplainSettings,
    asking_client_for,
    clients_holding,
    explain_image,
    locate_image,
    shown_neighbours,
)
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.federation.client import LocalCoreset


def _image(path, seed: int, size: int = 32) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _local(images: dict[str, list[str]], rows: int = 3) -> LocalCoreset:
    """A local coreset holding ``rows`` rows per category, row i from image i % n at patch (i, i)."""
    sources = {c: np.array([[i % len(keys), i, i] for i in range(rows)]) for c, keys in images.items()}
    return LocalCoreset(
        banks={c: np.zeros((rows, 4), np.float32) for c in images},
        image_keys={c: list(keys) for c, keys in images.items()},
        patch_source=sources,
    )


# ----------------------------------------------------------------------------- which image


def test_an_indexed_image_takes_its_category_from_the_index(tmp_path):
    path = _image(tmp_path / "0000.png", 0)
    indexed = Sample("metal_plate", TEST, "scratch", "0000", path)
    categories = ["metal_plate", "woven_fabric"]
    assert locate_image(path, None, [indexed], categories) == (indexed, "metal_plate")
    assert locate_image(path, "metal_plate", [indexed], categories) == (indexed, "metal_plate")
    with pytest.raises(InputError) as refused:
        locate_image(path, "woven_fabric", [indexed], categories)
    assert str(refused.value) == (
        f"explain.category 'woven_fabric' contradicts dataset_index, where {path} is an image of 'metal_plate': "
        "leave explain.category unset (the index says it) or set it to 'metal_plate'"
    )


def test_an_image_outside_the_index_needs_a_known_category(tmp_path):
    path = _image(tmp_path / "new.png", 1)
    assert locate_image(path, "woven_fabric", [], ["metal_plate", "woven_fabric"]) == (None, "woven_fabric")
    with pytest.raises(InputError, match=r"not in dataset_index: name its category with explain.category \(one of \['metal_plate'\]\)"):
        locate_image(path, None, [], ["metal_plate"])
    with pytest.raises(InputError, match="explain.category 'nope' is not a category of this dataset"):
        locate_image(path, "nope", [], ["metal_plate"])
    with pytest.raises(InputError, match="explain.image: no image file at"):
        locate_image(str(tmp_path / "missing.png"), None, [], ["metal_plate"])
    with pytest.raises(InputError, match="explain.image is not set"):
        locate_image(None, None, [], ["metal_plate"])


# ----------------------------------------------------------------------------- which client


def test_a_client_may_ask_only_about_a_category_it_holds():
    locals_ = {
        "metal": _local({"metal_plate": ["m0", "m1"]}),
        "qc": _local({"metal_plate": ["q0"], "woven_fabric": ["q1"]}),
        "textile": _local({"woven_fabric": ["t0"]}),
    }
    assert clients_holding("metal_plate", locals_) == ["metal", "qc"]
    assert asking_client_for(None, "metal_plate", locals_, lambda key: None, variant="federated") is None
    asking = asking_client_for("qc", "metal_plate", locals_, lambda key: None, variant="federated")
    assert (asking.client, list(asking.image_keys)) == ("qc", ["q0"])
    with pytest.raises(InputError) as refused:
        asking_client_for("textile", "metal_plate", locals_, lambda key: None, variant="federated")
    assert str(refused.value) == (
        "explain.client 'textile' does not hold category 'metal_plate' in variant 'federated': none of its images "
        "are in that category's bank; the clients that hold it: ['metal', 'qc']"
    )


# ----------------------------------------------------------------------------- the pixel rule


def test_only_the_asking_clients_own_images_are_read_and_cropped():
    provenances = [
        RowProvenance(bank_row=4, client="a", client_row=1, image_index=1, y=2, x=3),
        RowProvenance(bank_row=7, client="b", client_row=0, image_index=0, y=1, x=1),  # b knows where; a may not see
        RowProvenance(bank_row=9, client="a", client_row=2, image_index=1, y=0, x=0),  # same image: read once
        RowProvenance(bank_row=2, client="c", client_row=5, image_index=None, y=None, x=None),
    ]
    read = []

    def read_own(key: str) -> np.ndarray:
        read.append(key)
        return np.full((8, 8, 3), len(read), np.uint8)

    asking = AskingClient("a", ["a_img0", "a_img1"], read_own)
    entries, crops = shown_neighbours(2, provenances, [0.5, 1.0, 1.5, 2.0], asking, lambda image, y, x: image[y : y + 2, x : x + 2])

    assert read == ["a_img1"]  # never another client's image, and one read per own image
    assert sorted(crops) == ["a/p2_n0", "a/p2_n2"]
    assert [(e["client"], e["image"], e["crop"]) for e in entries] == [
        ("a", "a_img1", "a/p2_n0"),
        ("b", None, None),
        ("a", "a_img1", "a/p2_n2"),
        ("c", None, None),
    ]
    assert [e["patch"] for e in entries] == [[2, 3], [1, 1], [0, 0], None]  # positions for every client
    assert [e["distance"] for e in entries] == [0.5, 1.0, 1.5, 2.0]
    # Nobody asking: no image is read, no pixel is shown.
    entries, crops = shown_neighbours(0, provenances, [0.5, 1.0, 1.5, 2.0], None, lambda image, y, x: image)
    assert crops == {} and all(e["crop"] is None and e["image"] is None for e in entries)


@pytest.mark.slow  # SHAP over the 152 embedding dimensions: ~10 s on an idle 2-core machine
def test_an_explanation_holds_pixels_of_the_image_and_of_the_asker_only(tmp_path):
    """End to end in core: a tiny bank whose rows come from two clients; client "a" asks."""
    info = CategoryInfo("stripes", (32, 32), False)
    embedder = make_embedder({"name": "efficientnet_lite0", "device": "cpu"}, {"num_threads": 1, "neighbourhood": 3})
    own = {f"a{i}": _image(tmp_path / f"a{i}.png", 10 + i) for i in range(2)}
    # b's images are copies of a's: every row has a twin at the same distance, so the nearest
    # rows come from both clients, and b's pixels are exactly what must not be shown as b's.
    theirs = {f"b{i}": _image(tmp_path / f"b{i}.png", 10 + i) for i in range(2)}
    features = {key: embedder.embed(np.asarray(Image.open(path))[None])[0] for key, path in {**own, **theirs}.items()}
    h, w, _ = features["a0"].shape

    def local(keys: list[str]) -> LocalCoreset:
        positions = [(i, y, x) for i in range(len(keys)) for y in range(h) for x in range(w)]
        rows = np.stack([features[keys[i]][y, x] for i, y, x in positions]).astype(np.float32)
        return LocalCoreset({"stripes": rows}, {"stripes": keys}, {"stripes": np.array(positions)})

    locals_ = {"a": local(list(own)), "b": local(list(theirs))}
    n = len(locals_["a"].banks["stripes"])
    banks = CategoryBanks(
        {"stripes": np.concatenate([locals_["a"].banks["stripes"], locals_["b"].banks["stripes"]])},
        {"stripes": 4},
        {"stripes": np.array(["a"] * n + ["b"] * n)},
        {"stripes": np.concatenate([np.arange(n), np.arange(n)])},
    )
    read = []

    def read_own(key: str) -> np.ndarray:
        read.append(key)
        return np.asarray(Image.open(own[key]))

    asking = asking_client_for("a", "stripes", locals_, read_own, variant="v")
    settings = ExplainSettings(top_patches=2, neighbours=6, shap_background=4, shap_max_evals=None, shap_top_dimensions=3, sigma=4.0, seed=0)
    query = _image(tmp_path / "query.png", 99)
    result = explain_image(query, None, "stripes", info, BankSources.of(banks, locals_, "stripes", variant="v"), embedder, settings, asking, variant="v")

    neighbours = [n for p in result.explanation["patches"] for n in p["neighbours"]]
    assert {n["client"] for n in neighbours} == {"a", "b"}, "the test needs rows of both clients"
    assert set(read) <= set(own)
    assert all(key.startswith((f"{QUERY}/", "a/")) for key in result.crops)
    stride, size = result.explanation["stride"], result.explanation["crop_size"]
    for n in neighbours:
        if n["client"] == "a":
            expected = patch_crop(np.asarray(Image.open(own[n["image"]])), *n["patch"], stride, size)
            assert np.array_equal(result.crops[n["crop"]], expected)
        else:
            assert n["crop"] is None and n["image"] is None
    assert [name for name, array in result.arrays.items() if array.ndim == 3] == ["image"]
    assert result.explanation["asking_client"] == "a" and result.explanation["key"] is None
