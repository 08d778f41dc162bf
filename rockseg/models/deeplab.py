"""DeepLabV3+: an atrous encoder, atrous spatial pyramid pooling (ASPP) and a decoder with a low-level skip."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rockseg.errors import InputError
from rockseg.models.blocks import _act, _avgpool, _check_args, _conv, _norm, _resize
from rockseg.models.encoders import _ENCODER_LEVELS, _check_encoder, _make_encoder


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
