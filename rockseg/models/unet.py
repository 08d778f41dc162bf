"""U-Net: the plain network of Ronneberger et al., and a UNet decoder on a backbone encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rockseg.models.blocks import ConvBlock, Down, Up, _check_args, _conv
from rockseg.models.centre import _decode
from rockseg.models.encoders import _ENCODER_LEVELS, _check_encoder, _full_resolution, _make_encoder


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
