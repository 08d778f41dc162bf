"""The per-voxel linear classifier (``--arch linear``): learned grey-value thresholds, no context.

Each voxel's logits are ``w_c * x + b_c`` of its own normalised grey value ``x`` (a 1x1(x1) convolution), so the
arg-max cuts the grey-value axis into at most one interval per class: the thresholds a user would otherwise pick
by hand from a histogram, learned from labelled tiles. It is the baseline a network has to beat in the accuracy
tables, and, costing almost nothing per voxel, the network that measures the prediction engine itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rockseg.models.blocks import _check_args, _conv
from rockseg.models.centre import _cut


class LinearClassifier(nn.Module):
    """A 1x1(x1) convolution from grey values to class logits, in 2D or 3D.

    Parameters
    ----------
    spatial_dims : 2 or 3.
    in_channels : input channels (1 for a grey-value tomogram).
    classes : output classes (phases).
    base_channels, depth, norm, act : accepted and checked like every architecture's (``rockseg train`` passes
        them to all), but a per-voxel linear map has no width, depth, normalisation or activation to set.

    Input (N, in_channels, *spatial) normalised floats of any edge (``divisor`` = 1); output (N, classes,
    *spatial) logits.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, classes: int = 2, base_channels: int = 16,
        depth: int = 3, norm: str = "batch", act: str = "relu",
    ) -> None:
        super().__init__()
        _check_args("linear", spatial_dims=spatial_dims, in_channels=in_channels, classes=classes,
                    base_channels=base_channels, depth=depth, norm=norm, act=act)
        self.divisor = 1
        self.logits = _conv(spatial_dims)(in_channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # plain (N, C, *spatial) layout whatever the input's: one contiguous plane per class is what the arg-max
        # of a prediction reads fastest, and a 1x1 convolution gains nothing from channels-last
        weight = self.logits.weight.contiguous()
        conv = F.conv3d if x.ndim == 5 else F.conv2d
        return conv(x.contiguous(), weight, self.logits.bias)

    def forward_centre(self, x: torch.Tensor, margin: Sequence[int] | None) -> torch.Tensor:
        """The logits without ``margin[i]`` voxels on each face of axis ``i``: each voxel needs only itself, so
        the margin is cut from the input and never computed (see :func:`~rockseg.models.centre_logits`)."""
        return self.forward(_cut(x, margin or ()))
