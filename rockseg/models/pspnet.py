"""PSPNet: an atrous encoder and a pyramid pooling module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rockseg.errors import InputError
from rockseg.models.blocks import _act, _avgpool, _check_args, _conv, _norm, _resize
from rockseg.models.encoders import _ENCODER_LEVELS, _check_encoder, _make_encoder


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
