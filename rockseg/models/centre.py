"""Computing only the kept centre of a tile: the UNet decoder that skips what only the halo needs.

Prediction cuts the halo off every tile. :func:`centre_logits` gives the logits without it; UNet-family
networks run :func:`_decode` with a ``margin`` so that their decoder stages leave out the faces only the halo
needs, with the same values in the centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rockseg.models.blocks import ConvBlock, PreActBlock

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
