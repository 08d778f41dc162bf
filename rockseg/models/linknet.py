"""LinkNet: a ResNet (or VGG) encoder whose skips are added to a light decoder."""

from __future__ import annotations

import torch
from torch import nn

from rockseg.models.blocks import _act, _check_args, _conv, _norm, _tconv
from rockseg.models.encoders import _ENCODER_LEVELS, _check_encoder, _make_encoder


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
