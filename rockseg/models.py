"""Networks (2D and 3D from one definition) and the rockseg model file.

The architectures of :data:`ARCHITECTURES` (``unet``, ``resunet``, ``uresnet``, ``linknet``, ``unetpp``,
``deeplabv3plus``, ``pspnet``) all take ``spatial_dims, in_channels, classes, base_channels, depth, norm, act``
and, except ``resunet``, an ``encoder``: None for the architecture's own, or a standard backbone of
:data:`ENCODERS` whose weights :func:`load_encoder_weights` reads from a local torchvision state dict
(inflated to 3D where needed) and :func:`freeze_encoder` can freeze. Every network takes (N, in_channels,
*spatial) floats whose spatial edges are multiples of its ``divisor`` (:func:`tile_multiple` gives it without
building the weights) and returns (N, classes, *spatial) logits.

A model file is one ``torch.save`` of a plain dict (no pickled classes), so it loads with
``torch.load(path, weights_only=True)`` and a file from an untrusted source cannot run code. It holds:

``format`` / ``format_version``
    ``"rockseg-model"`` and 1.
``arch`` / ``arch_args``
    the architecture name (a key of :data:`ARCHITECTURES`) and the keyword arguments of its constructor.
``spatial_dims`` / ``in_channels`` / ``phases``
    2 or 3; input channels; ``{label: name}`` of the output classes (labels are 0..classes-1).
``normalization``
    the intensity statistics of the training image (see :mod:`rockseg.io.intensity`).
``tile`` / ``halo``
    recommended tile edge and halo for prediction, in voxels.
``training``
    a summary of the training run (settings, epochs, best validation mean IoU...).
``state_dict``
    the weights.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rockseg.errors import InputError, MissingInputError, did_you_mean
from rockseg.vocabulary import ACTIVATIONS, NORMS

FORMAT = "rockseg-model"
FORMAT_VERSION = 1


ENCODERS: tuple[str, ...] = ("resnet18", "resnet34", "vgg11", "vgg16")
"""Standard backbones an architecture can take as ``encoder``, laid out like torchvision's (see :func:`load_encoder_weights`).

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
_FIRST_CONV = {"resnet": "conv1.weight", "vgg": "features.0.weight"}
# both backbones halve the resolution five times: level k of an encoder is at 1/2**k of the input
_ENCODER_LEVELS = 5


def _conv(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def _tconv(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


def _maxpool(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]


def _avgpool(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(Bi/tri)linear resampling of (N, C, *spatial) to ``size``; the identity when the size is already ``size``."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear" if x.ndim == 4 else "trilinear", align_corners=False)


def _norm(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    if kind == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims](channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise InputError(f"unknown normalisation {kind!r}: choose batch, instance or none")


def _act(kind: str, inplace: bool = True) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=inplace)
    if kind == "elu":
        return nn.ELU(inplace=inplace)
    raise InputError(f"unknown activation {kind!r}: choose relu or elu")


def _check_args(
    arch: str, *, spatial_dims: int, in_channels: int, classes: int, base_channels: int, depth: int, norm: str,
    act: str, min_depth: int = 1, max_depth: int | None = None,
) -> None:
    """Check the arguments every architecture shares, before any layer is built."""
    if spatial_dims not in (2, 3):
        raise InputError(f"{arch}: spatial_dims must be 2 or 3, not {spatial_dims!r}")
    for name, value in (("in_channels", in_channels), ("classes", classes), ("base_channels", base_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{arch}: {name} must be a positive integer, not {value!r}")
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < min_depth or (
            max_depth is not None and depth > max_depth):
        span = f"between {min_depth} and {max_depth}" if max_depth is not None else f"at least {min_depth}"
        raise InputError(f"{arch}: depth must be {span}, not {depth!r}")
    if norm not in NORMS:
        raise InputError(f"{arch}: unknown normalisation {norm!r}{did_you_mean(norm, NORMS)}: "
                         f"choose {', '.join(NORMS)}")
    if act not in ACTIVATIONS:
        raise InputError(f"{arch}: unknown activation {act!r}{did_you_mean(act, ACTIVATIONS)}: "
                         f"choose {', '.join(ACTIVATIONS)}")


def _check_encoder(arch: str, encoder: str | None, allowed: Sequence[str] = ENCODERS) -> None:
    if encoder is None or encoder in allowed:
        return
    if encoder in ENCODERS:
        raise InputError(f"{arch} takes a ResNet encoder, not {encoder!r}: choose {' or '.join(allowed)}, "
                         f"or use the unet architecture for a {encoder} encoder")
    raise InputError(f"{arch}: unknown encoder {encoder!r}{did_you_mean(encoder, allowed)}: "
                     f"choose {', '.join(allowed)}, or None for the architecture's own encoder")


# ----------------------------------------------------------------------------------------------------------- blocks


class ConvBlock(nn.Sequential):
    """Two padded 3×3(×3) convolutions, each followed by normalisation and activation."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, norm: str, act: str) -> None:
        conv = _conv(spatial_dims)
        super().__init__(
            conv(in_ch, out_ch, 3, padding=1, bias=norm == "none"), _norm(norm, spatial_dims, out_ch), _act(act),
            conv(out_ch, out_ch, 3, padding=1, bias=norm == "none"), _norm(norm, spatial_dims, out_ch), _act(act),
        )


class Down(nn.Sequential):
    """Max-pool by 2, then a :class:`ConvBlock`."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, norm: str, act: str) -> None:
        super().__init__(_maxpool(spatial_dims)(2), ConvBlock(spatial_dims, in_ch, out_ch, norm, act))


class Up(nn.Module):
    """A UNet decoder stage: transposed convolution by 2 (``up``), concatenation with the skip connection, then a
    :class:`ConvBlock` (``conv``). :func:`_decode` runs the parts, so that it can crop between them."""

    def __init__(self, spatial_dims: int, in_ch: int, skip_ch: int, out_ch: int, norm: str, act: str) -> None:
        super().__init__()
        self.up = _tconv(spatial_dims)(in_ch, out_ch, 2, stride=2)
        self.conv = ConvBlock(spatial_dims, out_ch + skip_ch, out_ch, norm, act)


class BasicBlock(nn.Module):
    """The ResNet basic block (He et al. 2016) with torchvision's parameter names.

    ``conv1`` (3×3, ``stride``) -> ``bn1`` -> act -> ``conv2`` (3×3) -> ``bn2``, plus the input, or its 1×1
    projection ``downsample`` (conv, norm) when the stride or width changes, then act. ``dilation`` spaces the
    kernel taps (atrous convolution) without changing the weights' shapes.
    """

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, stride: int, dilation: int, norm: str, act: str,
    ) -> None:
        super().__init__()
        conv = _conv(spatial_dims)
        self.conv1 = conv(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = _norm(norm, spatial_dims, out_ch)
        self.act = _act(act)
        self.conv2 = conv(out_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _norm(norm, spatial_dims, out_ch)
        self.downsample = (
            nn.Sequential(conv(in_ch, out_ch, 1, stride=stride, bias=False), _norm(norm, spatial_dims, out_ch))
            if stride != 1 or in_ch != out_ch else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + shortcut)


class PreActBlock(nn.Module):
    """Pre-activation residual unit of ResUNet (Zhang et al. 2018): norm -> act -> conv, twice, plus a shortcut.

    The first conv has ``stride`` (ResUNet down-samples with it instead of max-pooling); the shortcut is the
    input itself, or a 1×1 projection (conv, norm) when the stride or width changes. ``preactivate=False`` drops
    the first norm/act, as in ResUNet's first unit that sees the raw image.
    """

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, stride: int, norm: str, act: str, preactivate: bool = True,
    ) -> None:
        super().__init__()
        conv = _conv(spatial_dims)
        # not in place: with norm "none" the activation would otherwise overwrite the input the shortcut adds
        self.pre = (nn.Sequential(_norm(norm, spatial_dims, in_ch), _act(act, inplace=False))
                    if preactivate else nn.Identity())
        self.conv1 = conv(in_ch, out_ch, 3, stride=stride, padding=1, bias=norm == "none")
        self.mid = nn.Sequential(_norm(norm, spatial_dims, out_ch), _act(act))
        self.conv2 = conv(out_ch, out_ch, 3, padding=1)
        self.shortcut = (
            nn.Sequential(conv(in_ch, out_ch, 1, stride=stride, bias=norm == "none"), _norm(norm, spatial_dims, out_ch))
            if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.mid(self.conv1(self.pre(x)))) + self.shortcut(x)


# --------------------------------------------------------------------------------------------------------- encoders


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


# A decoder stage up-samples the deeper features (a transposed convolution by 2 or nearest-neighbour: each output
# voxel depends on one input voxel), concatenates the skip and applies a block of two 3x3(x3) convolutions, so an
# output voxel depends on its inputs at most this far away.
_STAGE_REACH = 2
# what the cropped decoder stages may hold for the crop to be exact: no operation that mixes the whole tile
_LOCAL_MODULES = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.BatchNorm2d, nn.BatchNorm3d,
                  nn.ReLU, nn.ELU, nn.Identity, nn.Upsample, nn.Sequential, nn.ModuleList)


def _stage_crops(margin: Sequence[int], stages: int) -> list[tuple[int, ...]]:
    """Per decoder level (0 = full resolution), how many voxels of each face its stage may leave uncomputed when
    ``margin`` voxels of each face of the output are not wanted."""
    crops, need = [], tuple(margin)
    for _ in range(stages):
        crops.append(tuple(max(0, m - _STAGE_REACH) for m in need))
        need = tuple(c // 2 for c in crops[-1])
    return crops


def _cut(x: torch.Tensor, crop: Sequence[int]) -> torch.Tensor:
    """``x`` (N, C, *spatial) without ``crop[i]`` voxels on each face of spatial axis ``i``."""
    if not any(crop):
        return x
    return x[(slice(None), slice(None), *(slice(c, x.shape[2 + i] - c) for i, c in enumerate(crop)))]


def _exact_when_cut(stages: Sequence[tuple[nn.Module, nn.Module]]) -> bool:
    """True when the decoder stages are local (convolutions, eval-mode batch norm, activations): then leaving out
    the faces of a stage changes nothing inside. Instance norm (statistics over the whole tile) or a training-mode
    batch norm would make the centre depend on the faces."""
    for module in (m for stage in stages for part in stage for m in part.modules()):
        batch_stats = isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
        interpolates = isinstance(module, nn.Upsample) and module.mode != "nearest"  # reads its neighbours
        if batch_stats or interpolates or not isinstance(module, (*_LOCAL_MODULES, ConvBlock, PreActBlock)):
            return False
    return True


def _decode(
    x: torch.Tensor, skips: Sequence[torch.Tensor], stages: Sequence[tuple[nn.Module, nn.Module]],
    margin: Sequence[int] | None, head: nn.Module,
) -> torch.Tensor:
    """The UNet decoder: for each (deepest first) skip and stage (up-sample, block), ``block(cat(up(x), skip))``,
    then the 1x1 ``head``.

    With ``margin``, the logits lose ``margin[i]`` voxels on each face of axis ``i`` and the stages do not compute
    what only those voxels need: the full-resolution stage, a third or more of a UNet's work, runs on the tile
    less ``margin - 2`` per face. The centre is the same as the full output's, which is what prediction keeps
    (the halo is cut off anyway). Stages that are not local (instance norm) run whole, then are cut.
    """
    if margin is None or not any(margin):
        for (up, block), skip in zip(stages, skips):
            x = block(torch.cat([up(x), skip], dim=1))
        return head(x)
    if not _exact_when_cut(stages):
        out = _decode(x, skips, stages, None, head)
        return _cut(out, margin)
    crops = _stage_crops(margin, len(stages))[::-1]  # deepest first, as the stages
    below = (0,) * len(margin)
    for (up, block), skip, crop in zip(stages, skips, crops):
        x = block(torch.cat([_cut(up(x), [c - 2 * b for c, b in zip(crop, below)]), _cut(skip, crop)], dim=1))
        below = crop
    return _cut(head(x), [m - c for m, c in zip(margin, below)])


def centre_logits(model: nn.Module, x: torch.Tensor, margin: Sequence[int]) -> torch.Tensor:
    """``model(x)`` without ``margin[i]`` voxels on each face of spatial axis ``i`` (the halo of a tile).

    UNet-family networks (``unet``, ``uresnet``, ``resunet``) skip the work that only the margin needs, with the
    same values in the centre; the others compute the whole tile and cut it.
    """
    forward_centre = getattr(model, "forward_centre", None)
    if forward_centre is not None:
        return forward_centre(x, margin)
    return _cut(model(x), margin)


# ----------------------------------------------------------------------------------------------------- architectures


class _EncoderUNet(nn.Module):
    """A UNet decoder on the feature pyramid of an encoder (shared by :class:`UNet` with an encoder and
    :class:`UResNet`).

    ``stem`` is a :class:`ConvBlock` (``base_channels`` wide) giving the full-resolution skip the encoder lacks;
    decoder level ``i`` is ``base_channels * 2**i`` wide.
    """

    def _build_with_encoder(
        self, encoder: nn.Module, *, spatial_dims: int, in_channels: int, classes: int, base_channels: int,
        depth: int, norm: str, act: str,
    ) -> None:
        self.encoder = encoder
        enc = list(encoder.channels)
        self.stem = ConvBlock(spatial_dims, in_channels, base_channels, norm, act) if enc[0] == 0 else None
        enc[0] = enc[0] or base_channels
        dec = [base_channels * 2**i for i in range(depth + 1)]
        self.ups = nn.ModuleList(
            Up(spatial_dims, enc[depth] if i == depth - 1 else dec[i + 1], enc[i], dec[i], norm, act)
            for i in reversed(range(depth))
        )
        self.logits = _conv(spatial_dims)(dec[0], classes, 1)

    def _forward_with_encoder(self, x: torch.Tensor, margin: Sequence[int] | None = None) -> torch.Tensor:
        skips = _full_resolution(self.encoder(x), self.stem, x)
        stages = [(up.up, up.conv) for up in self.ups]
        return _decode(skips[-1], skips[-2::-1], stages, margin, self.logits)

    def forward_centre(self, x: torch.Tensor, margin: Sequence[int] | None) -> torch.Tensor:
        """The logits without ``margin[i]`` voxels on each face of spatial axis ``i``: see :func:`centre_logits`."""
        return self._forward_with_encoder(x, margin)


class UNet(_EncoderUNet):
    """The U-Net of Ronneberger et al. (2015) with padded convolutions, in 2D or 3D.

    Parameters
    ----------
    spatial_dims : 2 or 3.
    in_channels : input channels (1 for a grey-value tomogram).
    classes : output classes (phases).
    base_channels : channels of the first level; doubled at each level down.
    depth : number of down-sampling steps; tiles must have edges divisible by ``2**depth``.
    norm : ``"batch"``, ``"instance"`` or ``"none"``.
    act : ``"relu"`` or ``"elu"``.
    encoder : None for the plain U-Net, or a backbone of :data:`ENCODERS` (a "pretrained-encoder UNet", whose
        weights :func:`load_encoder_weights` reads). With an encoder, ``depth`` (at most 5) is the number of the
        backbone's levels used (5 = all of it), the encoder widths are the backbone's, and ``base_channels``
        sets the decoder widths (``base_channels * 2**level``) and a full-resolution :class:`ConvBlock` that
        gives a ResNet the skip it lacks.

    Input (N, in_channels, *spatial) normalised floats; output (N, classes, *spatial) logits.
    ``divisor`` = ``2**depth``.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, classes: int = 2, base_channels: int = 16,
        depth: int = 3, norm: str = "batch", act: str = "relu", encoder: str | None = None,
    ) -> None:
        super().__init__()
        _check_args("unet", spatial_dims=spatial_dims, in_channels=in_channels, classes=classes,
                    base_channels=base_channels, depth=depth, norm=norm, act=act,
                    max_depth=None if encoder is None else _ENCODER_LEVELS)
        _check_encoder("unet", encoder)
        self.encoder_name = encoder
        self.divisor = 2**depth
        if encoder is not None:
            self._build_with_encoder(
                _make_encoder(encoder, own="plain", spatial_dims=spatial_dims, in_channels=in_channels,
                              base_channels=base_channels, levels=depth, strided=depth, norm=norm, act=act),
                spatial_dims=spatial_dims, in_channels=in_channels, classes=classes, base_channels=base_channels,
                depth=depth, norm=norm, act=act,
            )
            return
        # the plain U-Net keeps the module names of rockseg's first model files, so they still load
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.enc1 = ConvBlock(spatial_dims, in_channels, widths[0], norm, act)
        self.downs = nn.ModuleList(
            Down(spatial_dims, widths[i], widths[i + 1], norm, act) for i in range(depth - 1)
        )
        self.bottleneck = Down(spatial_dims, widths[depth - 1], widths[depth], norm, act)
        self.ups = nn.ModuleList(
            Up(spatial_dims, widths[i + 1], widths[i], widths[i], norm, act) for i in reversed(range(depth))
        )
        self.logits = _conv(spatial_dims)(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_centre(x, None)

    def forward_centre(self, x: torch.Tensor, margin: Sequence[int] | None) -> torch.Tensor:
        if self.encoder_name is not None:
            return self._forward_with_encoder(x, margin)
        skips = [self.enc1(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        stages = [(up.up, up.conv) for up in self.ups]
        return _decode(self.bottleneck(skips[-1]), skips[::-1], stages, margin, self.logits)


class UResNet(_EncoderUNet):
    """U-ResNet: a ResNet encoder with a UNet decoder (transposed convolution, concatenated skip, two convs).

    Parameters
    ----------
    spatial_dims, in_channels, classes, norm, act : as :class:`UNet`.
    base_channels : width of the full-resolution stem and decoder level 0 (level i: ``base_channels * 2**i``);
        without a named encoder also the encoder's widths: ``base_channels * (1, 1, 2, 4, 8)`` for the stem
        convolution and ``layer1``-``layer4`` of a ResNet-18 layout.
    depth : down-sampling steps, 1-5 (levels of the ResNet used: ``conv1``, then ``layer1``... ``layer4``).
    encoder : None (a ResNet-18 layout of ``base_channels`` widths) or ``"resnet18"`` / ``"resnet34"`` (the
        torchvision widths, so pretrained weights load; then ``uresnet`` is the same network as ``unet`` with
        that encoder).

    ``divisor`` = ``2**depth``.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, classes: int = 2, base_channels: int = 16,
        depth: int = 3, norm: str = "batch", act: str = "relu", encoder: str | None = None,
    ) -> None:
        super().__init__()
        _check_args("uresnet", spatial_dims=spatial_dims, in_channels=in_channels, classes=classes,
                    base_channels=base_channels, depth=depth, norm=norm, act=act, max_depth=_ENCODER_LEVELS)
        _check_encoder("uresnet", encoder, tuple(_RESNET_BLOCKS))
        self.encoder_name = encoder
        self.divisor = 2**depth
        self._build_with_encoder(
            _make_encoder(encoder, own="resnet", spatial_dims=spatial_dims, in_channels=in_channels,
                          base_channels=base_channels, levels=depth, strided=depth, norm=norm, act=act),
            spatial_dims=spatial_dims, in_channels=in_channels, classes=classes, base_channels=base_channels,
            depth=depth, norm=norm, act=act,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_with_encoder(x)


class ResUNet(nn.Module):
    """ResUNet (Zhang, Liu & Wang 2018, "deep residual U-Net"): a UNet of pre-activation residual units.

    Each level is a :class:`PreActBlock` (norm -> act -> 3×3 conv, twice, plus a 1×1 projection shortcut);
    the encoder down-samples with stride-2 convolutions instead of max-pooling; the decoder up-samples by
    nearest-neighbour interpolation, concatenates the skip and applies a residual unit.

    Parameters
    ----------
    spatial_dims, in_channels, classes, base_channels, norm, act : as :class:`UNet`.
    depth : number of down-sampling steps (``depth=3`` is the published network).

    ``divisor`` = ``2**depth``.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, classes: int = 2, base_channels: int = 16,
        depth: int = 3, norm: str = "batch", act: str = "relu",
    ) -> None:
        super().__init__()
        _check_args("resunet", spatial_dims=spatial_dims, in_channels=in_channels, classes=classes,
                    base_channels=base_channels, depth=depth, norm=norm, act=act)
        self.encoder_name = None
        self.divisor = 2**depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.enc1 = PreActBlock(spatial_dims, in_channels, widths[0], 1, norm, act, preactivate=False)
        self.downs = nn.ModuleList(
            PreActBlock(spatial_dims, widths[i], widths[i + 1], 2, norm, act) for i in range(depth - 1)
        )
        self.bridge = PreActBlock(spatial_dims, widths[depth - 1], widths[depth], 2, norm, act)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.ups = nn.ModuleList(
            PreActBlock(spatial_dims, widths[i + 1] + widths[i], widths[i], 1, norm, act)
            for i in reversed(range(depth))
        )
        self.logits = _conv(spatial_dims)(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_centre(x, None)

    def forward_centre(self, x: torch.Tensor, margin: Sequence[int] | None) -> torch.Tensor:
        skips = [self.enc1(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        stages = [(self.upsample, up) for up in self.ups]
        return _decode(self.bridge(skips[-1]), skips[::-1], stages, margin, self.logits)


class LinkDecoder(nn.Sequential):
    """LinkNet decoder block: 1×1 conv to ``in_ch/4``, 3×3 transposed conv by 2, 1×1 conv to ``out_ch``;
    each followed by norm and act."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, norm: str, act: str) -> None:
        conv, mid, bias = _conv(spatial_dims), max(1, in_ch // 4), norm == "none"
        super().__init__(
            conv(in_ch, mid, 1, bias=bias), _norm(norm, spatial_dims, mid), _act(act),
            _tconv(spatial_dims)(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=bias),
            _norm(norm, spatial_dims, mid), _act(act),
            conv(mid, out_ch, 1, bias=bias), _norm(norm, spatial_dims, out_ch), _act(act),
        )


class LinkNet(nn.Module):
    """LinkNet (Chaurasia & Culurciello 2017): a ResNet encoder whose skips are *added* to the decoder.

    Decoder block k (a :class:`LinkDecoder`) brings level k up to level k-1 at that level's encoder width and
    the encoder feature of level k-1 is added to it. A ResNet has no full-resolution feature, so the head is
    the published one: 3×3 transposed conv by 2 to ``base_channels``, 3×3 conv, 1×1 conv to ``classes``. A VGG
    encoder has one, so its head is a 3×3 conv and the 1×1 classifier.

    Parameters
    ----------
    spatial_dims, in_channels, classes, norm, act : as :class:`UNet`.
    base_channels : width of the head; without a named encoder also the widths of the own ResNet-18 layout
        (``base_channels * (1, 1, 2, 4, 8)``).
    depth : down-sampling steps, 1-5 (5 = the whole ResNet, as published).
    encoder : None, or a backbone of :data:`ENCODERS`.

    ``divisor`` = ``2**depth``.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, classes: int = 2, base_channels: int = 16,
        depth: int = 3, norm: str = "batch", act: str = "relu", encoder: str | None = None,
    ) -> None:
        super().__init__()
        _check_args("linknet", spatial_dims=spatial_dims, in_channels=in_channels, classes=classes,
                    base_channels=base_channels, depth=depth, norm=norm, act=act, max_depth=_ENCODER_LEVELS)
        _check_encoder("linknet", encoder)
        self.encoder_name = encoder
        self.divisor = 2**depth
        self.encoder = _make_encoder(encoder, own="resnet", spatial_dims=spatial_dims, in_channels=in_channels,
                                     base_channels=base_channels, levels=depth, strided=depth, norm=norm, act=act)
        enc = self.encoder.channels
        self.lowest = 0 if enc[0] else 1
        self.decoders = nn.ModuleList(
            LinkDecoder(spatial_dims, enc[k], enc[k - 1], norm, act) for k in range(depth, self.lowest, -1)
        )
        conv, bias, b = _conv(spatial_dims), norm == "none", base_channels
        if self.lowest == 1:
            self.head = nn.Sequential(
                _tconv(spatial_dims)(enc[1], b, 3, stride=2, padding=1, output_padding=1, bias=bias),
                _norm(norm, spatial_dims, b), _act(act),
                conv(b, b, 3, padding=1, bias=bias), _norm(norm, spatial_dims, b), _act(act),
            )
        else:
            self.head = nn.Sequential(conv(enc[0], b, 3, padding=1, bias=bias), _norm(norm, spatial_dims, b), _act(act))
        self.logits = conv(b, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        x = features[-1]
        for decoder, skip in zip(self.decoders, reversed(features[self.lowest:-1])):
            x = decoder(x) + skip
        return self.logits(self.head(x))


class UNetPlusPlus(nn.Module):
    """UNet++ (Zhou et al. 2018): a UNet whose skips are nested, densely connected convolution pathways.

    Node ``x{i}_{j}`` (level i, column j ≥ 1) is a :class:`ConvBlock` on the concatenation of every node
    ``x{i}_{k}``, k < j, of its level and the up-sampled (2× transposed conv) node ``x{i+1}_{j-1}``; column 0
    is the encoder. The logits come from ``x0_{depth}`` (no deep supervision).

    Parameters
    ----------
    spatial_dims, in_channels, classes, norm, act : as :class:`UNet`.
    base_channels : width of the nested nodes of level 0 (level i: ``base_channels * 2**i``), and of the
        plain UNet encoder when ``encoder`` is None.
    depth : down-sampling steps (at most 5 with a named encoder).
    encoder : None (the UNet encoder) or a backbone of :data:`ENCODERS`.

    ``divisor`` = ``2**depth``.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, classes: int = 2, base_channels: int = 16,
        depth: int = 3, norm: str = "batch", act: str = "relu", encoder: str | None = None,
    ) -> None:
        super().__init__()
        _check_args("unetpp", spatial_dims=spatial_dims, in_channels=in_channels, classes=classes,
                    base_channels=base_channels, depth=depth, norm=norm, act=act,
                    max_depth=None if encoder is None else _ENCODER_LEVELS)
        _check_encoder("unetpp", encoder)
        self.encoder_name = encoder
        self.divisor = 2**depth
        self.depth = depth
        self.encoder = _make_encoder(encoder, own="plain", spatial_dims=spatial_dims, in_channels=in_channels,
                                     base_channels=base_channels, levels=depth, strided=depth, norm=norm, act=act)
        enc = list(self.encoder.channels)
        self.stem = ConvBlock(spatial_dims, in_channels, base_channels, norm, act) if enc[0] == 0 else None
        enc[0] = enc[0] or base_channels
        dec = [base_channels * 2**i for i in range(depth + 1)]
        self.ups, self.nodes = nn.ModuleDict(), nn.ModuleDict()
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                below = enc[i + 1] if j == 1 else dec[i + 1]
                self.ups[f"x{i}_{j}"] = _tconv(spatial_dims)(below, dec[i], 2, stride=2)
                self.nodes[f"x{i}_{j}"] = ConvBlock(spatial_dims, enc[i] + j * dec[i], dec[i], norm, act)
        self.logits = _conv(spatial_dims)(dec[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded = _full_resolution(self.encoder(x), self.stem, x)
        nodes = {(i, 0): f for i, f in enumerate(encoded)}
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                name = f"x{i}_{j}"
                up = self.ups[name](nodes[i + 1, j - 1])
                nodes[i, j] = self.nodes[name](torch.cat([*(nodes[i, k] for k in range(j)), up], dim=1))
        return self.logits(nodes[0, self.depth])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): a 1×1 conv, 3×3 convs dilated by each of ``rates`` and an
    image-pooling branch (global mean, 1×1 conv, broadcast back), concatenated and projected by a 1×1 conv.

    The image-pooling branch has no normalisation: a norm over one value per channel is undefined for a batch
    of one (and for instance norm always).
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, rates: Sequence[int], norm: str, act: str):
        super().__init__()
        conv, bias = _conv(spatial_dims), norm == "none"
        self.branches = nn.ModuleList(
            [nn.Sequential(conv(in_ch, out_ch, 1, bias=bias), _norm(norm, spatial_dims, out_ch), _act(act))]
            + [nn.Sequential(conv(in_ch, out_ch, 3, padding=r, dilation=r, bias=bias),
                             _norm(norm, spatial_dims, out_ch), _act(act)) for r in rates]
        )
        self.image_pool = nn.Sequential(_avgpool(spatial_dims)(1), conv(in_ch, out_ch, 1), _act(act))
        self.project = nn.Sequential(conv(out_ch * (len(rates) + 2), out_ch, 1, bias=bias),
                                     _norm(norm, spatial_dims, out_ch), _act(act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([*(branch(x) for branch in self.branches), pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (Chen et al. 2018): an atrous encoder, :class:`ASPP`, and a decoder with a low-level skip.

    The encoder (all five levels of the backbone) halves the resolution ``depth`` times; its later levels
    keep the resolution and dilate instead (the "output stride" is ``2**depth``). ASPP runs on the last
    level; its output is resampled (bi/trilinear) to the low-level feature of level ``min(2, depth - 1)``
    (1/4 of the input, as published, for ``depth`` ≥ 3), concatenated with a 1×1 reduction of it, refined by
    two 3×3 convs, classified by a 1×1 conv and resampled to the input size.

    Parameters
    ----------
    spatial_dims, in_channels, classes, norm, act : as :class:`UNet`.
    base_channels : width of the low-level reduction; ASPP and the decoder are ``4 * base_channels`` wide.
        Without a named encoder also the widths of the own ResNet-18 layout (``base_channels * (1, 1, 2, 4, 8)``).
    depth : 2-5, the number of strided levels (output stride ``2**depth``; 5 leaves no atrous level).
    encoder : None, or a backbone of :data:`ENCODERS`.
    atrous_rates : dilations of ASPP's 3×3 branches. The published (6, 12, 18) suit 513-pixel images at
        output stride 16; rock tiles are 32-128 voxels, so the default is (2, 4, 6).

    ``divisor`` = ``2**depth``.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, classes: int = 2, base_channels: int = 16,
        depth: int = 3, norm: str = "batch", act: str = "relu", encoder: str | None = None,
        atrous_rates: Sequence[int] = (2, 4, 6),
    ) -> None:
        super().__init__()
        _check_args("deeplabv3plus", spatial_dims=spatial_dims, in_channels=in_channels, classes=classes,
                    base_channels=base_channels, depth=depth, norm=norm, act=act, min_depth=2,
                    max_depth=_ENCODER_LEVELS)
        _check_encoder("deeplabv3plus", encoder)
        rates = list(atrous_rates)
        if not rates or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rates):
            raise InputError(f"deeplabv3plus: atrous_rates must be positive integers, not {atrous_rates!r}")
        self.encoder_name = encoder
        self.divisor = 2**depth
        self.low_level = min(2, depth - 1)
        self.encoder = _make_encoder(encoder, own="resnet", spatial_dims=spatial_dims, in_channels=in_channels,
                                     base_channels=base_channels, levels=_ENCODER_LEVELS, strided=depth,
                                     norm=norm, act=act)
        enc = self.encoder.channels
        conv, bias, wide = _conv(spatial_dims), norm == "none", 4 * base_channels
        self.aspp = ASPP(spatial_dims, enc[-1], wide, rates, norm, act)
        self.reduce = nn.Sequential(conv(enc[self.low_level], base_channels, 1, bias=bias),
                                    _norm(norm, spatial_dims, base_channels), _act(act))
        self.decoder = nn.Sequential(
            conv(wide + base_channels, wide, 3, padding=1, bias=bias), _norm(norm, spatial_dims, wide), _act(act),
            conv(wide, wide, 3, padding=1, bias=bias), _norm(norm, spatial_dims, wide), _act(act),
        )
        self.logits = conv(wide, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        low = features[self.low_level]
        context = _resize(self.aspp(features[-1]), low.shape[2:])
        y = self.decoder(torch.cat([context, self.reduce(low)], dim=1))
        return _resize(self.logits(y), x.shape[2:])


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: for each bin count, adaptive average pooling to ``bins``³ (or ²) cells,
    a 1×1 conv to a quarter of the width and act, resampled back (bi/trilinear) and concatenated with the input.

    No normalisation in the branches: a norm over the one cell of bin 1 is undefined for a batch of one.
    """

    def __init__(self, spatial_dims: int, in_ch: int, bins: Sequence[int], act: str) -> None:
        super().__init__()
        self.branch_channels = max(1, in_ch // 4)
        self.branches = nn.ModuleList(
            nn.Sequential(_avgpool(spatial_dims)(b), _conv(spatial_dims)(in_ch, self.branch_channels, 1), _act(act))
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *(_resize(branch(x), x.shape[2:]) for branch in self.branches)], dim=1)


class PSPNet(nn.Module):
    """PSPNet (Zhao et al. 2017): an atrous encoder, a :class:`PyramidPooling` module (bins 1, 2, 3, 6), a 3×3
    conv, a 1×1 classifier, and resampling (bi/trilinear) to the input size.

    Parameters
    ----------
    spatial_dims, in_channels, classes, norm, act : as :class:`UNet`.
    base_channels : the fusion conv after pooling is ``4 * base_channels`` wide; without a named encoder also
        the widths of the own ResNet-18 layout (``base_channels * (1, 1, 2, 4, 8)``).
    depth : 2-5, the number of strided encoder levels (output stride ``2**depth``; published: 3, i.e. 1/8,
        with the later levels dilated).
    encoder : None, or a backbone of :data:`ENCODERS`.
    bins : cells per axis of each pyramid level.

    ``divisor`` = ``2**depth``.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, classes: int = 2, base_channels: int = 16,
        depth: int = 3, norm: str = "batch", act: str = "relu", encoder: str | None = None,
        bins: Sequence[int] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        _check_args("pspnet", spatial_dims=spatial_dims, in_channels=in_channels, classes=classes,
                    base_channels=base_channels, depth=depth, norm=norm, act=act, min_depth=2,
                    max_depth=_ENCODER_LEVELS)
        _check_encoder("pspnet", encoder)
        bins = list(bins)
        if not bins or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in bins):
            raise InputError(f"pspnet: bins must be positive integers, not {bins!r}")
        self.encoder_name = encoder
        self.divisor = 2**depth
        self.encoder = _make_encoder(encoder, own="resnet", spatial_dims=spatial_dims, in_channels=in_channels,
                                     base_channels=base_channels, levels=_ENCODER_LEVELS, strided=depth,
                                     norm=norm, act=act)
        top, wide = self.encoder.channels[-1], 4 * base_channels
        self.pyramid = PyramidPooling(spatial_dims, top, bins, act)
        conv = _conv(spatial_dims)
        self.fuse = nn.Sequential(
            conv(top + len(bins) * self.pyramid.branch_channels, wide, 3, padding=1, bias=norm == "none"),
            _norm(norm, spatial_dims, wide), _act(act),
        )
        self.logits = conv(wide, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.pyramid(self.encoder(x)[-1])
        return _resize(self.logits(self.fuse(context)), x.shape[2:])


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "resunet": ResUNet,
    "uresnet": UResNet,
    "linknet": LinkNet,
    "unetpp": UNetPlusPlus,
    "deeplabv3plus": DeepLabV3Plus,
    "pspnet": PSPNet,
}


def build_model(arch: str, **arch_args: Any) -> nn.Module:
    """Build a network by architecture name, e.g. ``build_model("unet", spatial_dims=2, classes=4)``.

    Raises
    ------
    InputError
        for an unknown architecture, an argument its constructor does not take, or a bad argument value.
    """
    if arch not in ARCHITECTURES:
        # the names in papers ("UNet++", "DeepLabV3+", "U-ResNet") map onto ours
        spelt = str(arch).lower().replace("-", "").replace("_", "").replace("++", "pp").replace("+", "plus")
        hint = f" (did you mean {spelt!r}?)" if spelt in ARCHITECTURES else did_you_mean(arch, list(ARCHITECTURES))
        raise InputError(f"unknown architecture {arch!r}{hint}: choose one of {', '.join(ARCHITECTURES)}")
    factory = ARCHITECTURES[arch]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(arch_args) - set(params))
        if unknown:
            raise InputError(f"architecture {arch!r} takes no argument {unknown[0]!r}"
                             f"{did_you_mean(unknown[0], list(params))}: choose from {', '.join(params)}")
    return factory(**arch_args)


def tile_multiple(arch: str, arch_args: Mapping[str, Any]) -> int:
    """The number every tile edge must be a multiple of for this network (its ``divisor``), without weights.

    The network is built on PyTorch's ``meta`` device, which allocates nothing, so this is cheap even for a
    3D ResNet-34 encoder. A registered network without a ``divisor`` attribute gets ``2**depth`` (``depth``
    from ``arch_args``, 3 when absent), the rule of rockseg's first models.

    Raises
    ------
    InputError
        as :func:`build_model`.
    """
    with torch.device("meta"):
        model = build_model(arch, **dict(arch_args))
    return int(getattr(model, "divisor", 2 ** int(arch_args.get("depth", 3))))


def save_model_file(path: str | os.PathLike[str], model: nn.Module, **meta: Any) -> None:
    """Write ``model`` and its metadata (see the module docstring for the keys) as one model file.

    Written under a temporary name and renamed, so a crash never leaves a truncated model file.
    """
    required = {"arch", "arch_args", "spatial_dims", "in_channels", "phases", "normalization", "tile", "halo"}
    missing = required - meta.keys()
    if missing:
        raise ValueError(f"model file metadata lacks {sorted(missing)}")
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, **meta,
        "phases": {str(k): str(v) for k, v in meta["phases"].items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    torch.save(payload, tmp)
    os.replace(tmp, p)


def read_model_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a model file safely (``weights_only=True``) and check that it is a rockseg model."""
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"model {p} does not exist: check the path, or train one with 'rockseg train'")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"model {p} is not a rockseg model file that loads safely ({first[:160]}): "
            f"use a file written by 'rockseg train'"
        ) from None
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        raise InputError(f"model {p} is not a rockseg model file: use a file written by 'rockseg train'")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(
            f"model {p} has format version {payload['format_version']}, newer than this rockseg reads "
            f"({FORMAT_VERSION}): upgrade rockseg"
        )
    return dict(payload)


def model_from_payload(payload: Mapping[str, Any]) -> nn.Module:
    """Build the network described by a model-file payload and load its weights (eval mode)."""
    model = build_model(payload["arch"], **payload["arch_args"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def fold_batch_norm(model: nn.Module) -> int:
    """Fold every eval-mode batch norm that directly follows a convolution into that convolution, in place.

    For inference only: ``conv`` then ``bn`` becomes one convolution with scaled weights and a bias (PyTorch's
    ``fuse_conv_bn_eval``), which spares one pass over every activation. The outputs agree with the unfolded
    network to float rounding. Returns the number of pairs folded.
    """
    if model.training:
        raise ValueError("fold_batch_norm is for eval-mode models: call model.eval() first")
    folded = 0
    for parent in list(model.modules()):
        names = list(parent._modules)
        if isinstance(parent, nn.Sequential):  # conv, bn next to each other
            pairs = list(zip(names, names[1:]))
        else:  # torchvision's ResNet naming: forward runs bn{i}(conv{i}(x))
            pairs = [(a, "bn" + a[4:]) for a in names if a.startswith("conv") and "bn" + a[4:] in names]
        for a, b in pairs:
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d)) \
                    and bn.track_running_stats and conv.out_channels == bn.num_features:
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
                folded += 1
    return folded


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Load a rockseg model file as a ``torch.nn.Module`` in eval mode.

    The module takes normalised float input (N, in_channels, *spatial) and returns logits
    (N, classes, *spatial). Read the metadata (phases, normalisation, tile...) with :func:`read_model_file`.
    """
    return model_from_payload(read_model_file(path))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, hex; identifies the model that made a prediction."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _encoder_of(model: nn.Module, what: str) -> tuple[str, nn.Module]:
    """The name and module of a model's backbone encoder; InputError naming ``what`` when it has none."""
    name, encoder = getattr(model, "encoder_name", None), getattr(model, "encoder", None)
    if name not in ENCODERS or not isinstance(encoder, nn.Module):
        raise InputError(
            f"{what}: this {type(model).__name__} has no backbone encoder (encoder={name!r}): build the model "
            f"with an encoder, one of {', '.join(ENCODERS)}"
        )
    return name, encoder


def _state_dict_in(payload: Any) -> Mapping[str, torch.Tensor] | None:
    """The ``{name: tensor}`` mapping in a loaded checkpoint (itself, or under "state_dict" / "model"), or None."""
    for _ in range(3):
        if not isinstance(payload, Mapping) or not payload:
            return None
        if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
            return payload
        inner = next((payload[k] for k in ("state_dict", "model") if isinstance(payload.get(k), Mapping)), None)
        if inner is None:
            return None
        payload = inner
    return None


def load_encoder_weights(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load backbone weights (for example ImageNet-pretrained) from a LOCAL file into ``model.encoder``.

    Nothing is ever downloaded. The file is read with ``torch.load(path, map_location="cpu",
    weights_only=True)`` and must hold a torchvision-style state dict of the model's backbone (``resnet18``:
    ``conv1.weight``, ``layer1.0.bn1.running_mean``...; ``vgg11``: torchvision's ``vgg11_bn`` ``features.N``...),
    as written by ``torch.save(torchvision_model.state_dict(), path)``. It may be nested under ``"state_dict"``
    or ``"model"`` and prefixed with ``module.``; when some keys start with ``encoder.`` (a rockseg model file,
    say) only those are used. The classifier (``fc.*``, ``classifier.*``) and the levels a shallower model does
    not build are skipped.

    Shapes are adapted where the meaning is clear:

    * a 3D model gets each 2D kernel (O, I, kh, kw) inflated to (O, I, k, kh, kw): repeated along the new depth
      axis and divided by its size k (I3D, Carreira & Zisserman 2017), so a volume constant along depth gives
      the 2D response;
    * a first convolution for another number of input channels is summed over the file's channels and shared
      evenly by the model's: for one grey channel it is the sum, so a grey image gives the response of the RGB
      network to the same grey in all three channels.

    Parameters
    ----------
    model : a network built with ``encoder`` one of :data:`ENCODERS`; changed in place.
    path : the state-dict file.

    Returns
    -------
    dict
        ``loaded`` (tensors copied into the encoder), ``inflated`` (of those, 2D kernels made 3D),
        ``channels_adapted`` (first convolutions summed over channels), ``skipped`` (file keys not used:
        classifier, levels not built, norm statistics a model without batch norm has no place for) and
        ``missing`` (encoder tensors the file did not set), both lists of names.

    Raises
    ------
    MissingInputError
        if ``path`` does not exist.
    InputError
        if the model has no backbone encoder, the file is not a state dict that loads safely, or its tensors
        do not fit the backbone (no key in common, a key the backbone lacks, or a shape that cannot be adapted).
    """
    p = Path(path)
    name, encoder = _encoder_of(model, f"cannot load encoder weights from {p}")
    if not p.is_file():
        raise MissingInputError(
            f"encoder weights {p} do not exist: check the path (rockseg never downloads weights; save a "
            f"{name} state dict there with torch.save(model.state_dict(), path) on a machine that has one)"
        )
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"encoder weights {p} do not load as a plain state dict ({first[:160]}): save the weights with "
            f"torch.save(model.state_dict(), path), not the whole model"
        ) from None
    state = _state_dict_in(payload)
    if state is None:
        raise InputError(
            f"encoder weights {p} hold a {type(payload).__name__} that is not a state dict of named tensors: "
            f"save the weights with torch.save(model.state_dict(), path)"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    skipped: list[str] = []
    if any(k.startswith("encoder.") for k in state):
        skipped += [k for k in state if not k.startswith("encoder.")]
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}

    family = "resnet" if name in _RESNET_BLOCKS else "vgg"
    with torch.device("meta"):
        # the whole torchvision backbone: keys of levels this model does not build are skipped, others are errors
        reference = set(_make_encoder(name, own="", spatial_dims=2, in_channels=3, base_channels=1,
                                      levels=_ENCODER_LEVELS, strided=_ENCODER_LEVELS, norm="batch",
                                      act="relu").state_dict())
    target = encoder.state_dict()
    first_conv = _FIRST_CONV[family]
    new: dict[str, torch.Tensor] = {}
    unknown, inflated, adapted = [], 0, 0
    for key, tensor in state.items():
        if key.startswith(("fc.", "classifier.")):
            skipped.append(key)
            continue
        if key not in target:
            (skipped if key in reference else unknown).append(key)
            continue
        want = target[key]
        t = tensor.detach().to(dtype=want.dtype)
        if t.ndim == 4 and want.ndim == 5:
            depth = want.shape[2]
            t = t.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
            inflated += 1
        if key == first_conv and t.ndim == want.ndim and t.shape[1] != want.shape[1] and \
                t.shape[0] == want.shape[0] and t.shape[2:] == want.shape[2:]:
            channels = want.shape[1]
            t = t.sum(dim=1, keepdim=True).repeat(1, channels, *([1] * (t.ndim - 2))) / channels
            adapted += 1
        if t.shape != want.shape:
            raise InputError(
                f"encoder weights {p}: {key} has shape {tuple(tensor.shape)} but this {family} encoder needs "
                f"{tuple(want.shape)}: the file holds another network than {name}; build the model with the "
                f"encoder the file was saved from"
            )
        new[key] = t
    if not new:
        first = next(iter(state), "nothing")
        raise InputError(
            f"encoder weights {p} have no tensor of a {name} encoder (first key {first!r}): use a torchvision "
            f"{name} state dict{' (the vgg*_bn variant)' if family == 'vgg' else ''}"
        )
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise InputError(
            f"encoder weights {p} hold {unknown[0]!r}{more}, which a {name} encoder lacks: the file holds "
            f"another network; build the model with the encoder the file was saved from"
        )
    encoder.load_state_dict(new, strict=False)
    return {
        "loaded": len(new), "inflated": inflated, "channels_adapted": adapted,
        "skipped": sorted(skipped), "missing": sorted(set(target) - set(new)),
    }


def freeze_encoder(model: nn.Module) -> int:
    """Stop training the backbone encoder: ``requires_grad = False`` on all its parameters.

    Batch-norm running statistics still follow the data in train mode (they are buffers, not parameters),
    which lets an ImageNet encoder adapt to grey-value tomograms; call ``model.encoder.eval()`` after
    ``model.train()`` to freeze them too.

    Returns
    -------
    int
        the number of scalar parameters frozen.

    Raises
    ------
    InputError
        if the model has no backbone encoder (built with ``encoder`` one of :data:`ENCODERS`).
    """
    _, encoder = _encoder_of(model, "cannot freeze the encoder")
    count = 0
    for param in encoder.parameters():
        param.requires_grad_(False)
        count += param.numel()
    return count
