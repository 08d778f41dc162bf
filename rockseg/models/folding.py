"""Folding batch norm into the convolution before it, for faster inference."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norm(model: nn.Module) -> int:
    """Fold every eval-mode batch norm that directly follows a convolution into that convolution, in place.

    For inference only: ``conv`` then ``bn`` becomes one convolution with scaled weights and a bias (PyTorch's
    ``fuse_conv_bn_eval``), which spares one pass over every activation. The outputs agree with the unfolded
    network to float rounding. Returns the number of pairs folded.
    """
    if model.training:
        raise ValueError("fold_batch_norm is for eval-mode models: call model.eval() first")
    folded = 0
    for parent in list(model.modules()):
        names = list(parent._modules)
        if isinstance(parent, nn.Sequential):  # conv, bn next to each other
            pairs = list(zip(names, names[1:]))
        else:  # torchvision's ResNet naming: forward runs bn{i}(conv{i}(x))
            pairs = [(a, "bn" + a[4:]) for a in names if a.startswith("conv") and "bn" + a[4:] in names]
        for a, b in pairs:
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d)) \
                    and bn.track_running_stats and conv.out_channels == bn.num_features:
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
                folded += 1
    return folded
