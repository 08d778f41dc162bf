"""Shared test helpers: an exact box-sum "network" and binary and grey volumes for the block-wise engine.

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
    kernel = np.ones((3,) * min(axes, data.ndim), np.int64)
    if axes == 3 or data.ndim == 2:
        return ndimage.correlate(data.astype(np.int64), kernel, mode="mirror")
    return np.stack([ndimage.correlate(s.astype(np.int64), kernel, mode="mirror") for s in data])




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
