"""Networks (2D and 3D from one definition) and the rockseg model file.

A model file is one ``torch.save`` of a plain dict (no pickled classes), so it loads with
``torch.load(path, weights_only=True)`` and a file from an untrusted source cannot run code. It holds:

``format`` / ``format_version``
    ``"rockseg-model"`` and 1.
``arch`` / ``arch_args``
    the architecture name (a key of :data:`ARCHITECTURES`) and the keyword arguments of its constructor.
``spatial_dims`` / ``in_channels`` / ``phases``
    2 or 3; input channels; ``{label: name}`` of the output classes (labels are 0..classes-1).
``normalization``
    the intensity statistics of the training image (see :mod:`rockseg.normalization`).
``tile`` / ``halo``
    recommended tile edge and halo for prediction, in voxels.
``training``
    a summary of the training run (settings, epochs, best validation mean IoU...).
``state_dict``
    the weights.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rockseg.errors import InputError, MissingInputError

FORMAT = "rockseg-model"
FORMAT_VERSION = 1


def _conv(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def _norm(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    if kind == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims](channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise InputError(f"unknown normalisation {kind!r}: choose batch, instance or none")


def _act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "elu":
        return nn.ELU(inplace=True)
    raise InputError(f"unknown activation {kind!r}: choose relu or elu")


class ConvBlock(nn.Sequential):
    """Two padded 3×3(×3) convolutions, each followed by normalisation and activation."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, norm: str, act: str) -> None:
        conv = _conv(spatial_dims)
        super().__init__(
            conv(in_ch, out_ch, 3, padding=1, bias=norm == "none"), _norm(norm, spatial_dims, out_ch), _act(act),
            conv(out_ch, out_ch, 3, padding=1, bias=norm == "none"), _norm(norm, spatial_dims, out_ch), _act(act),
        )


class Down(nn.Sequential):
    """Max-pool by 2, then a :class:`ConvBlock`."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, norm: str, act: str) -> None:
        pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]
        super().__init__(pool(2), ConvBlock(spatial_dims, in_ch, out_ch, norm, act))


class Up(nn.Module):
    """Transposed convolution by 2, concatenation with the skip connection, then a :class:`ConvBlock`."""

    def __init__(self, spatial_dims: int, in_ch: int, skip_ch: int, out_ch: int, norm: str, act: str) -> None:
        super().__init__()
        tconv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
        self.up = tconv(in_ch, out_ch, 2, stride=2)
        self.conv = ConvBlock(spatial_dims, out_ch + skip_ch, out_ch, norm, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
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

    Input (N, in_channels, *spatial) normalised floats; output (N, classes, *spatial) logits.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, classes: int = 2, base_channels: int = 16,
        depth: int = 3, norm: str = "batch", act: str = "relu",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        if depth < 1:
            raise InputError(f"depth must be at least 1, not {depth}")
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
        self.divisor = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.enc1(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = self.bottleneck(skips[-1])
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.logits(x)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"unet": UNet}


def build_model(arch: str, **arch_args: Any) -> nn.Module:
    """Build a network by architecture name, e.g. ``build_model("unet", spatial_dims=2, classes=4)``."""
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**arch_args)


def save_model_file(path: str | os.PathLike[str], model: nn.Module, **meta: Any) -> None:
    """Write ``model`` and its metadata (see the module docstring for the keys) as one model file.

    Written under a temporary name and renamed, so a crash never leaves a truncated model file.
    """
    required = {"arch", "arch_args", "spatial_dims", "in_channels", "phases", "normalization", "tile", "halo"}
    missing = required - meta.keys()
    if missing:
        raise ValueError(f"model file metadata lacks {sorted(missing)}")
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, **meta,
        "phases": {str(k): str(v) for k, v in meta["phases"].items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    torch.save(payload, tmp)
    os.replace(tmp, p)


def read_model_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a model file safely (``weights_only=True``) and check that it is a rockseg model."""
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"model {p} does not exist: check the path, or train one with 'rockseg train'")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"model {p} is not a rockseg model file that loads safely ({first[:160]}): "
            f"use a file written by 'rockseg train'"
        ) from None
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        raise InputError(f"model {p} is not a rockseg model file: use a file written by 'rockseg train'")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(
            f"model {p} has format version {payload['format_version']}, newer than this rockseg reads "
            f"({FORMAT_VERSION}): upgrade rockseg"
        )
    return dict(payload)


def model_from_payload(payload: Mapping[str, Any]) -> nn.Module:
    """Build the network described by a model-file payload and load its weights (eval mode)."""
    model = build_model(payload["arch"], **payload["arch_args"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Load a rockseg model file as a ``torch.nn.Module`` in eval mode.

    The module takes normalised float input (N, in_channels, *spatial) and returns logits
    (N, classes, *spatial). Read the metadata (phases, normalisation, tile...) with :func:`read_model_file`.
    """
    return model_from_payload(read_model_file(path))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, hex; identifies the model that made a prediction."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
