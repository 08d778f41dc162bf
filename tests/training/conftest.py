"""Fixtures of the training tests: tile sets to train on, and a small volume to cut tiles from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from rockseg.training import make_tiles
from tests.training.helpers import two_phase, write


@pytest.fixture(scope="package")
def tilesets(tmp_path_factory) -> dict[int, Path]:
    """A 3D and a 2D tile set (size 16, phases pore and grain) of one 32**3 volume; tests only read them."""
    d = tmp_path_factory.mktemp("tiles")
    image, labels = two_phase((32, 32, 32))
    for name, data in (("img.zarr", image), ("lab.zarr", labels)):
        zarr.create_array(str(d / name), data=data, chunks=(16, 16, 16))
    make_tiles(d / "img.zarr", d / "lab.zarr", d / "t3.zarr", dims=3, size=16, count=16,
               phases={0: "pore", 1: "grain"})
    make_tiles(d / "img.zarr", d / "lab.zarr", d / "t2.zarr", dims=2, size=16, count=48,
               phases={0: "pore", 1: "grain"})
    return {3: d / "t3.zarr", 2: d / "t2.zarr"}


@pytest.fixture
def vol(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    image, labels = two_phase((32, 32, 32))
    return write(tmp_path / "img.zarr", image), write(tmp_path / "lab.zarr", labels), image, labels
