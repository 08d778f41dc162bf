"""The residual UNets: U-ResNet (a ResNet encoder, a UNet decoder) and ResUNet (pre-activation residual units)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rockseg.models.blocks import PreActBlock, _check_args, _conv
from rockseg.models.centre import _decode
from rockseg.models.encoders import _ENCODER_LEVELS, _RESNET_BLOCKS, _check_encoder, _make_encoder
from rockseg.models.unet import _EncoderUNet


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
