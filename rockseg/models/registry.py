"""The architectures by name: :data:`ARCHITECTURES`, :func:`build_model` and :func:`tile_multiple`.

Every name other code builds a network from (a model file's ``arch``, ``train --arch``) is looked up in
:data:`ARCHITECTURES`; ``rockseg.vocabulary.ARCH_NAMES`` lists the same names without importing torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from rockseg.errors import InputError, did_you_mean
from rockseg.models.deeplab import DeepLabV3Plus
from rockseg.models.linear import LinearClassifier
from rockseg.models.linknet import LinkNet
from rockseg.models.pspnet import PSPNet
from rockseg.models.resunet import ResUNet, UResNet
from rockseg.models.unet import UNet
from rockseg.models.unetpp import UNetPlusPlus

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "resunet": ResUNet,
    "uresnet": UResNet,
    "linknet": LinkNet,
    "unetpp": UNetPlusPlus,
    "deeplabv3plus": DeepLabV3Plus,
    "pspnet": PSPNet,
    "linear": LinearClassifier,
}


def build_model(arch: str, **arch_args: Any) -> nn.Module:
    """Build a network by architecture name, e.g. ``build_model("unet", spatial_dims=2, classes=4)``.

    Raises
    ------
    InputError
        for an unknown architecture, an argument its constructor does not take, or a bad argument value.
    """
    if arch not in ARCHITECTURES:
        # the names in papers ("UNet++", "DeepLabV3+", "U-ResNet") map onto ours
        spelt = str(arch).lower().replace("-", "").replace("_", "").replace("++", "pp").replace("+", "plus")
        hint = f" (did you mean {spelt!r}?)" if spelt in ARCHITECTURES else did_you_mean(arch, list(ARCHITECTURES))
        raise InputError(f"unknown architecture {arch!r}{hint}: choose one of {', '.join(ARCHITECTURES)}")
    factory = ARCHITECTURES[arch]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(arch_args) - set(params))
        if unknown:
            raise InputError(f"architecture {arch!r} takes no argument {unknown[0]!r}"
                             f"{did_you_mean(unknown[0], list(params))}: choose from {', '.join(params)}")
    return factory(**arch_args)


def tile_multiple(arch: str, arch_args: Mapping[str, Any]) -> int:
    """The number every tile edge must be a multiple of for this network (its ``divisor``), without weights.

    The network is built on PyTorch's ``meta`` device, which allocates nothing, so this is cheap even for a
    3D ResNet-34 encoder. A registered network without a ``divisor`` attribute gets ``2**depth`` (``depth``
    from ``arch_args``, 3 when absent), the rule of rockseg's first models.

    Raises
    ------
    InputError
        as :func:`build_model`.
    """
    with torch.device("meta"):
        model = build_model(arch, **dict(arch_args))
    return int(getattr(model, "divisor", 2 ** int(arch_args.get("depth", 3))))
