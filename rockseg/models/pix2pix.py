"""The PatchGAN discriminator of pix2pix (Isola et al., CVPR 2017), in 2D or 3D, for adversarial segmentation.

pix2pix is a conditional GAN: a generator (here a rockseg ``unet``) maps the grey image to a segmentation, and a
discriminator judges (image, segmentation) pairs patch by patch, real (the one-hot labels) or generated (the
generator's softmax). :class:`PatchDiscriminator` is that judge: strided 4-wide convolutions halve the tile
``layers`` times, then two 3-wide convolutions give one logit per patch (54 voxels wide for ``layers=3``; the
paper's 4-wide last convolutions give 70, but shrink small tiles). Only training uses it
(:mod:`rockseg.training.adversarial`); the model file holds the generator alone, a plain ``unet`` that ``predict``
runs like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from rockseg.models.blocks import _conv


def _instance_norm(spatial_dims: int, channels: int) -> nn.Module:
    return (nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d)(channels, affine=True)


class PatchDiscriminator(nn.Module):
    """Judges (image, segmentation) pairs patch by patch: logits (N, 1, *patches), high for real pairs.

    Parameters
    ----------
    spatial_dims : 2 or 3.
    in_channels : channels of the image (1 for grey values).
    classes : channels of the segmentation (one-hot labels or softmax probabilities).
    base_channels : width of the first layer, doubled at each stride up to 8 times it.
    layers : strided (halving) layers; tile edges must be multiples of ``2**layers`` and at least ``2**(layers+1)``
        for instance normalisation to see more than one voxel.
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 1, classes: int = 2, base_channels: int = 32, layers: int = 3,
    ) -> None:
        super().__init__()
        conv = _conv(spatial_dims)
        width = [min(base_channels * 2**i, base_channels * 8) for i in range(layers + 1)]
        modules: list[nn.Module] = [conv(in_channels + classes, width[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for i in range(1, layers):
            modules += [conv(width[i - 1], width[i], 4, 2, 1, bias=False), _instance_norm(spatial_dims, width[i]),
                        nn.LeakyReLU(0.2, inplace=True)]
        modules += [conv(width[layers - 1], width[layers], 3, 1, 1, bias=False),
                    _instance_norm(spatial_dims, width[layers]), nn.LeakyReLU(0.2, inplace=True),
                    conv(width[layers], 1, 3, 1, 1)]
        self.net = nn.Sequential(*modules)
        self.layers, self.divisor = layers, 2**layers

    def forward(self, image: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, segmentation.to(image.dtype)], 1))
