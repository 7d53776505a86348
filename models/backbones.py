"""torchvision classification networks as YOLOv5 backbones, usable from a model YAML.

``TorchvisionBackbone`` wraps a torchvision model cut by ``create_feature_extractor`` after its last stride-8,
stride-16 and stride-32 stages and returns ``[P3, P4, P5]``; ``Take`` layers pick one of them so that the usual
YOLOv5 neck and ``Detect`` head can follow unchanged::

    backbone:
      - [-1, 1, TorchvisionBackbone, [mobilenet_v3_small]]  # 0: [P3/8, P4/16, P5/32]
      - [0, 1, Take, [0]]  # 1 P3/8
      - [0, 1, Take, [1]]  # 2 P4/16
      - [0, 1, Take, [2]]  # 3 P5/32

Supported families: models with a ``features`` Sequential (MobileNetV2/V3, EfficientNet/V2, ConvNeXt), ResNet /
ResNeXt / Wide-ResNet and RegNet. ImageNet weights are loaded only when torchvision's file is already in the torch
hub cache (``$TORCH_HOME/hub/checkpoints``); they are never downloaded. Parameter names are torchvision's own under
``body.`` (e.g. ``model.0.body.features.3.block.0.0.weight``), so checkpoints rebuilt from the YAML load by name.

``DetectionModel`` gives YOLOv5's BatchNorm eps 1e-3 / momentum 0.03 to the neck and head only: the backbone keeps
torchvision's own settings, which its ImageNet statistics were computed with (eps is not learned). A model rebuilt
from a checkpoint skips the ImageNet file (``checkpoint_weights()``): the checkpoint's tensors replace it anyway.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from utils.errors import UserError
from utils.log import LOGGER

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LEVEL_STRIDES = (8, 16, 32)
_STAGED = {  # families without a ``features`` Sequential: their stride-8/16/32 stages by name
    "ResNet": ("layer2", "layer3", "layer4"),
    "RegNet": ("trunk_output.block2", "trunk_output.block3", "trunk_output.block4"),
}
_reported_missing: set[str] = set()  # print the "no pretrained weights" line once per architecture and process
_from_checkpoint = False  # True while checkpoint_weights() is active: no ImageNet file is read


@contextlib.contextmanager
def checkpoint_weights() -> Iterator[None]:
    """Within this block backbones are built without reading ImageNet weights: a checkpoint will supply them."""
    global _from_checkpoint
    before, _from_checkpoint = _from_checkpoint, True
    try:
        yield
    finally:
        _from_checkpoint = before


class BackboneError(UserError):
    """An architecture that cannot serve as a backbone; the message is one line."""


def _classification_models() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _build_classifier(arch: str) -> nn.Module:
    import torchvision

    if arch not in _classification_models():
        raise BackboneError(
            f"TorchvisionBackbone: unknown torchvision model {arch!r}; use a classification model such as "
            "mobilenet_v3_small, mobilenet_v3_large, mobilenet_v2, efficientnet_b0, resnet18, regnet_y_400mf"
        )
    return torchvision.models.get_model(arch, weights=None)


def _probe(net: nn.Module, names: list[str]) -> dict[str, tuple[int, int]]:
    """``{module name: (stride, channels)}`` of the outputs of ``names`` when ``net`` classifies a probe image."""
    size = 256  # large enough that odd (unpadded, ceil-mode) layers still give round strides
    shapes: dict[str, torch.Size] = {}
    hooks = [
        net.get_submodule(n).register_forward_hook(lambda m, i, out, n=n: shapes.__setitem__(n, out.shape))
        for n in names
    ]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return {n: (round(size / s[-1]), int(s[1])) for n, s in shapes.items()}


@functools.cache
def feature_layout(arch: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``(node names, output channels)`` of the P3/P4/P5 (stride 8/16/32) outputs of ``arch``, cached per process.

    Families with a ``features`` Sequential are cut after the last child at each stride; ResNet and RegNet after
    their named stages.
    """
    net = _build_classifier(arch)
    staged = _STAGED.get(type(net).__name__)
    if staged:
        candidates = list(staged)
    elif isinstance(getattr(net, "features", None), nn.Sequential):
        candidates = [f"features.{k}" for k, _ in net.features.named_children()]
    else:
        candidates = []
    probe = _probe(net, candidates)
    last = {stride: name for name, (stride, _) in probe.items()}  # children run in order: the last one wins
    if not all(s in last for s in LEVEL_STRIDES) or (staged and [last[s] for s in LEVEL_STRIDES] != candidates):
        raise BackboneError(
            f"TorchvisionBackbone: {arch} has no stride 8/16/32 stages we know how to cut; supported: models "
            "with a 'features' Sequential (MobileNet, EfficientNet, ConvNeXt), ResNet/ResNeXt, RegNet"
        )
    nodes = tuple(last[s] for s in LEVEL_STRIDES)
    return nodes, tuple(probe[n][1] for n in nodes)


def pretrained_file(arch: str) -> Path:
    """Where torchvision keeps the default ImageNet weights of ``arch`` (``$TORCH_HOME/hub/checkpoints/...``)."""
    import torchvision

    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load_pretrained(net: nn.Module, arch: str) -> bool:
    """Load ``arch``'s ImageNet weights into ``net`` if the file is on disk (never downloaded); True when loaded."""
    file = pretrained_file(arch)
    if not file.is_file():
        if arch not in _reported_missing:
            _reported_missing.add(arch)
            LOGGER.info(
                f"TorchvisionBackbone: pretrained {arch} weights not found at {file} (never downloaded); "
                "random init, so training starts from scratch"
            )
        return False
    net.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    return True


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier's feature extractor: Tensor[B, 3, H, W] (RGB 0-1) -> [P3, P4, P5].

    The outputs are Tensor[B, C_i, H / s, W / s] for s = 8, 16, 32 with C_i from ``feature_layout(arch)``. Inputs are
    normalised with the ImageNet mean / std inside, as the pretrained weights expect. YAML args:
    ``[arch, pretrained=True]``; ``pretrained`` only loads weights already on disk.
    """

    yaml_string_args = True  # parse_model passes ``arch`` through instead of resolving it as a YAML symbol

    def __init__(self, c1: int, arch: str, pretrained: bool = True):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        if c1 != 3:
            raise BackboneError(f"TorchvisionBackbone {arch}: expects 3 input channels, got {c1}")
        nodes, _ = feature_layout(arch)
        net = _build_classifier(arch)
        self.pretrained = pretrained and not _from_checkpoint and load_pretrained(net, arch)
        # the node -> key mapping keeps the output order P3, P4, P5; unused layers (pooling, classifier) are dropped
        self.body = create_feature_extractor(net, {n: str(i) for i, n in enumerate(nodes)})
        # not persistent: constants, not weights, so the state dict holds torchvision's tensors only
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def __deepcopy__(self, memo: dict) -> TorchvisionBackbone:
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new.train(self.training)  # a deep-copied fx GraphModule comes back in training mode

    @classmethod
    def yaml_out_channels(cls, ch: list, f: int, args: list, gw: float) -> tuple[list, list[int]]:
        """parse_model hook: prepend the input channels; the layer's 'channels' are the list [C3, C4, C5]."""
        if not isinstance(f, int):
            raise BackboneError("TorchvisionBackbone: 'from' must be a single layer index")
        return [ch[f], *args], list(feature_layout(args[0])[1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.body((x - self.mean) / self.std)
        return [out[str(i)] for i in range(len(out))]

    def fuse(self) -> None:
        """Fold every BatchNorm that directly follows a convolution into it (inference only)."""
        from torch import fx

        gm = self.body
        modules = dict(gm.named_modules())
        pairs = []  # (conv name, bn name)
        for name, seq in modules.items():  # inside Sequentials, e.g. torchvision's Conv2dNormActivation leaves
            if isinstance(seq, nn.Sequential):
                kids = list(seq.named_children())
                prefix = f"{name}." if name else ""
                pairs += [(prefix + a, prefix + b) for (a, _), (b, _) in zip(kids, kids[1:])]
        for node in gm.eval_graph.nodes:  # explicit calls such as ResNet's bn1(conv1(x)); both graphs share modules
            src = node.args[0] if node.op == "call_module" and node.args else None
            if isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1:
                pairs.append((src.target, node.target))
        for conv_name, bn_name in pairs:
            conv, bn = modules[conv_name], modules[bn_name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                modules[conv_name] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())
                modules[bn_name] = nn.Identity()
                gm.set_submodule(conv_name, modules[conv_name])  # modules are looked up by name at call time
                gm.set_submodule(bn_name, modules[bn_name])


class Take(nn.Module):
    """Pick output ``index`` of a multi-output layer (a list of tensors), e.g. P4 of a ``TorchvisionBackbone``."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    @classmethod
    def yaml_out_channels(cls, ch: list, f: int, args: list, gw: float) -> tuple[list, int]:
        """parse_model hook: the channels of the picked output of layer ``f``."""
        channels = ch[f] if isinstance(f, int) else None
        if not isinstance(channels, list):
            raise BackboneError(f"Take: layer {f} must be a single multi-output layer (such as TorchvisionBackbone)")
        if not -len(channels) <= args[0] < len(channels):
            raise BackboneError(f"Take: index {args[0]} out of range for layer {f} with {len(channels)} outputs")
        return args, channels[args[0]]

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[self.index]
