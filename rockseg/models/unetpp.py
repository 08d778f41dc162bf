"""UNet++: a UNet whose skips are nested, densely connected convolution pathways."""

from __future__ import annotations

import torch
from torch import nn

from rockseg.models.blocks import ConvBlock, _check_args, _conv, _tconv
from rockseg.models.encoders import _ENCODER_LEVELS, _check_encoder, _full_resolution, _make_encoder


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
