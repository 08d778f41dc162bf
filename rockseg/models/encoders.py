"""The encoders (feature pyramids) a network can be built on: the standard backbones of :data:`ENCODERS`
(ResNet, VGG; laid out like torchvision's so that its weights load) and the plain UNet encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rockseg.errors import InputError, did_you_mean
from rockseg.models.blocks import BasicBlock, ConvBlock, Down, _act, _conv, _maxpool, _norm

ENCODERS: tuple[str, ...] = ("resnet18", "resnet34", "vgg11", "vgg16")
"""Standard backbones an architecture can take as ``encoder``, laid out like torchvision's (see
:func:`~rockseg.models.pretrained.load_encoder_weights`).

``resnet18`` / ``resnet34``: ``conv1, bn1, layer1..layer4`` of BasicBlocks (``conv1, bn1, conv2, bn2,
downsample.0/.1``), widths 64, 64, 128, 256, 512. ``vgg11`` / ``vgg16``: the batch-norm variants (torchvision's
``vgg11_bn`` / ``vgg16_bn``), ``features.N``. In 3D every kernel gains a depth axis of the same size (7×7 -> 7×7×7).
"""

_RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_RESNET_WIDTHS = (64, 64, 128, 256, 512)
# convolution widths of the five VGG blocks; a max-pool follows each block
_VGG_BLOCKS = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
}
# both backbones halve the resolution five times: level k of an encoder is at 1/2**k of the input
_ENCODER_LEVELS = 5


def _check_encoder(arch: str, encoder: str | None, allowed: Sequence[str] = ENCODERS) -> None:
    """Check an architecture's ``encoder`` argument (None or one of ``allowed``), before any layer is built."""
    if encoder is None or encoder in allowed:
        return
    if encoder in ENCODERS:
        raise InputError(f"{arch} takes a ResNet encoder, not {encoder!r}: choose {' or '.join(allowed)}, "
                         f"or use the unet architecture for a {encoder} encoder")
    raise InputError(f"{arch}: unknown encoder {encoder!r}{did_you_mean(encoder, allowed)}: "
                     f"choose {', '.join(allowed)}, or None for the architecture's own encoder")


class ResNetEncoder(nn.Module):
    """A ResNet (18/34 layout) as a feature pyramid, with torchvision's parameter names.

    Level 1 is ``conv1`` (7×7, stride 2) -> ``bn1`` -> act; level 2 is a 3×3 max-pool (stride 2) then ``layer1``;
    levels 3-5 are ``layer2``-``layer4`` (stride 2). Only ``levels`` levels are built. Levels beyond ``strided``
    keep the resolution and dilate their convolutions instead (2, then 4: the "atrous" ResNet of DeepLab).

    ``forward`` returns ``[None, f1, ..., f_levels]``: there is no full-resolution (level 0) feature.
    ``channels`` holds the widths per level (0 for the missing level 0).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, widths: Sequence[int], blocks: Sequence[int], levels: int,
        strided: int, norm: str, act: str,
    ) -> None:
        super().__init__()
        conv = _conv(spatial_dims)
        self.levels = levels
        self.conv1 = conv(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(norm, spatial_dims, widths[0])
        self.act = _act(act)
        self.maxpool = _maxpool(spatial_dims)(3, stride=2, padding=1)
        dilation, in_ch = 1, widths[0]
        for i in range(1, levels):
            stride, first_dilation = (1 if i == 1 else 2), dilation
            if i + 1 > strided:
                stride, dilation = 1, dilation * 2
            # the first block keeps the previous dilation, as torchvision's replace_stride_with_dilation does
            layer = [BasicBlock(spatial_dims, in_ch, widths[i], stride, first_dilation, norm, act)]
            layer += [BasicBlock(spatial_dims, widths[i], widths[i], 1, dilation, norm, act)
                      for _ in range(blocks[i - 1] - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*layer))
            in_ch = widths[i]
        self.channels = (0, *widths[:levels])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        x = self.act(self.bn1(self.conv1(x)))
        features: list[torch.Tensor | None] = [None, x]
        for i in range(1, self.levels):
            if i == 1:
                x = self.maxpool(x)
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features


class VGGEncoder(nn.Module):
    """A VGG with batch norm (torchvision's ``vgg11_bn`` / ``vgg16_bn`` layout, ``features.N``) as a feature pyramid.

    Level 0 is the first block of 3×3 convolutions (each conv -> norm -> act) at full resolution; level k
    (1-4) is a 2× max-pool then block k+1; level 5 is the last max-pool. Only ``levels`` levels are built (the
    ``features`` indices stay torchvision's). Max-pools of levels beyond ``strided`` become identities and the
    convolutions after them are dilated (2, then 4) instead.

    ``forward`` returns ``[f0, ..., f_levels]``; ``channels`` holds their widths.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, blocks: Sequence[Sequence[int]], levels: int, strided: int,
        norm: str, act: str,
    ) -> None:
        super().__init__()
        conv = _conv(spatial_dims)
        layers: list[nn.Module] = []
        self._ends: list[int] = []
        channels, dilation, in_ch = [], 1, in_channels
        for level in range(levels + 1):
            if level > 0:
                if level <= strided:
                    layers.append(_maxpool(spatial_dims)(2, stride=2))
                else:
                    layers.append(nn.Identity())
                    dilation *= 2
            for width in blocks[level] if level < len(blocks) else ():
                layers += [conv(in_ch, width, 3, padding=dilation, dilation=dilation),
                           _norm(norm, spatial_dims, width), _act(act)]
                in_ch = width
            self._ends.append(len(layers))
            channels.append(in_ch)
        self.features = nn.Sequential(*layers)
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        features: list[torch.Tensor | None] = []
        ends = iter(self._ends)
        end = next(ends)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i + 1 == end:
                features.append(x)
                end = next(ends, -1)
        return features


class PlainEncoder(nn.Module):
    """The UNet encoder: a :class:`ConvBlock` at full resolution, then ``depth`` × (max-pool, :class:`ConvBlock`).

    Widths ``base_channels * 2**level``. ``forward`` returns ``[f0, ..., f_depth]``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, base_channels: int, depth: int, norm: str, act: str):
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.blocks = nn.ModuleList([ConvBlock(spatial_dims, in_channels, widths[0], norm, act)])
        self.blocks.extend(Down(spatial_dims, widths[i], widths[i + 1], norm, act) for i in range(depth))
        self.channels = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        features: list[torch.Tensor | None] = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


def _make_encoder(
    name: str | None, *, own: str, spatial_dims: int, in_channels: int, base_channels: int, levels: int,
    strided: int, norm: str, act: str,
) -> nn.Module:
    """The named backbone of :data:`ENCODERS`, or for ``None`` the architecture's ``own`` ("resnet" or "plain")."""
    if name is None and own == "plain":
        return PlainEncoder(spatial_dims, in_channels, base_channels, levels, norm, act)
    if name is None:
        widths = tuple(base_channels * k for k in (1, 1, 2, 4, 8))
        return ResNetEncoder(spatial_dims, in_channels, widths, _RESNET_BLOCKS["resnet18"], levels, strided,
                             norm, act)
    if name in _RESNET_BLOCKS:
        return ResNetEncoder(spatial_dims, in_channels, _RESNET_WIDTHS, _RESNET_BLOCKS[name], levels, strided,
                             norm, act)
    return VGGEncoder(spatial_dims, in_channels, _VGG_BLOCKS[name], levels, strided, norm, act)


def _full_resolution(features: list[torch.Tensor | None], stem: nn.Module | None, x: torch.Tensor) -> list[Any]:
    """Fill in the level-0 feature with ``stem(x)`` for encoders that have none (ResNets start at stride 2)."""
    if stem is not None:
        features = [stem(x), *features[1:]]
    return features
