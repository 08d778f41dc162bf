"""The building blocks of every network: dimension-generic layers, the shared argument checks, and the
convolution and residual blocks.

A network is built from these with ``spatial_dims`` (2 or 3) as a parameter, so one definition gives the 2D
and the 3D network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rockseg.errors import InputError, did_you_mean
from rockseg.vocabulary import ACTIVATIONS, NORMS


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
    :class:`ConvBlock` (``conv``). :func:`~rockseg.models.centre._decode` runs the parts, so that it can crop
    between them."""

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
