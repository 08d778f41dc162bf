"""Shared test helpers: an exact box-sum "network" and binary and grey volumes for the block-wise engine, and the
architectures, arguments and inputs the network tests run through.

Test modules import these from ``tests.helpers``; the fixtures that use them live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import zarr
from scipy import ndimage
from torch import nn

import rockseg


class BoxSum(nn.Module):
    def __init__(self, spatial_dims: int = 3, classes: int = 28, depth: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv = conv(1, 1, 3, padding=1, bias=False)
        nn.init.ones_(self.conv.weight)
        self.register_buffer("classes", torch.arange(classes, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv(x)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return -((s - self.classes.view(shape)) ** 2)


def binary_volume(path, shape, seed=0, chunks=None):
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) < 0.4).astype(np.uint8)
    arr = zarr.create_array(store=str(path), shape=shape, chunks=chunks or shape, dtype="uint8")
    arr[...] = data
    arr.attrs["intensity"] = {"p_low": 0.0, "p_high": 1.0}
    return data


def expected_boxsum(data, axes=3):
    # tiles at the volume's faces are clamped inside it, so the box sum sees zeros (BoxSum's padding) beyond them
    kernel = np.ones((3,) * min(axes, data.ndim), np.int64)
    if axes == 3 or data.ndim == 2:
        return ndimage.correlate(data.astype(np.int64), kernel, mode="constant")
    return np.stack([ndimage.correlate(s.astype(np.int64), kernel, mode="constant") for s in data])


def grey_volume(path, shape, seed=0, chunks=(16, 16, 16)):
    """A random uint8 grey-value volume written to a Zarr store at ``path``; returns the data."""
    data = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    arr = zarr.create_array(store=str(path), shape=shape, chunks=tuple(min(c, n) for c, n in zip(chunks, shape)),
                            dtype="uint8")
    arr[...] = data
    return data


#: The real data beside the project (``../shared/data``); tests that need it skip with a reason when it is absent.
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def run_rockseg(*args, cwd=None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "rockseg", *map(str, args)], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


# the model rockseg ships (a plain 3D UNet), which old model files must still load like
DEFAULT_MODEL = Path(rockseg.__file__).parent / "data" / "pore-solid-3d.pt"

# every architecture with each kind of encoder it takes: its own (None), a ResNet and a VGG
CASES = [
    ("unet", None), ("unet", "resnet18"), ("unet", "vgg11"),
    ("resunet", None),
    ("uresnet", None), ("uresnet", "resnet18"),
    ("linknet", None), ("linknet", "resnet18"), ("linknet", "vgg11"),
    ("unetpp", None), ("unetpp", "resnet18"), ("unetpp", "vgg11"),
    ("deeplabv3plus", None), ("deeplabv3plus", "resnet18"), ("deeplabv3plus", "vgg11"),
    ("pspnet", None), ("pspnet", "resnet18"), ("pspnet", "vgg11"),
]
# DeepLabV3+ and PSPNet always build the whole backbone (its later levels dilated): 3D ones are ~30 M parameters
HEAVY = {("deeplabv3plus", "resnet18"), ("deeplabv3plus", "vgg11"), ("pspnet", "resnet18"), ("pspnet", "vgg11")}


def model_args(encoder, dims, **extra):
    args = dict(spatial_dims=dims, in_channels=1, classes=3, base_channels=4, depth=3, norm="batch", act="relu")
    if encoder is not None:
        args["encoder"] = encoder
    return {**args, **extra}


def model_input(model, dims, batch=2, seed=0):
    # edges 1, 2 and 3 times the divisor: a non-cubic tile catches an axis mix-up in the decoder
    d = model.divisor
    shape = (2 * d, d, 3 * d) if dims == 3 else (2 * d, 3 * d)
    return torch.randn(batch, 1, *shape, generator=torch.Generator().manual_seed(seed))
