"""Helpers shared by the training tests: small two-phase volumes, stores, and checks of the patches of a tile set.

The fixtures built on them (``tilesets``, ``vol``) are in ``tests/training/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr
from scipy import ndimage as ndi

from rockseg.models import read_model_file

#: Settings of a tiny, fast training run.
TINY = dict(base_channels=4, batch_size=2, epochs=1, steps_per_epoch=2, num_threads=1)


def two_phase(shape: tuple[int, ...], seed: int = 0, noise: float = 12) -> tuple[np.ndarray, np.ndarray]:
    """A grey image (uint8) and its two-phase labels: a threshold of smoothed noise, plus noise."""
    rng = np.random.default_rng(seed)
    labels = (ndi.gaussian_filter(rng.standard_normal(shape), 2) > 0).astype(np.uint8)
    image = (60 + 80 * labels + rng.normal(0, noise, shape)).clip(0, 255).astype(np.uint8)
    return image, labels


def write(path: Path, data: np.ndarray, **attrs) -> Path:
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=(16,) * data.ndim)
    arr[...] = data
    arr.attrs.update(attrs)
    return path


def tile_set(folder: Path, image: np.ndarray, labels: np.ndarray, chunks: tuple[int, ...], name: str = "t.zarr",
             **options) -> Path:
    """Write ``image`` and ``labels`` as stores in ``folder`` and tile them (``make_tiles`` ``options``)."""
    from rockseg.training import make_tiles

    for store, data in (("img.zarr", image), ("lab.zarr", labels)):
        zarr.create_array(str(folder / store), data=data, chunks=chunks)
    make_tiles(folder / "img.zarr", folder / "lab.zarr", folder / name, **options)
    return folder / name


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_model_file(path)["state_dict"]


def boxes(origins: np.ndarray, extent: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    return origins, origins + np.array(extent)


def overlapping_pairs(a: np.ndarray, b: np.ndarray, extent: tuple[int, ...]) -> int:
    """Number of (a, b) patch pairs whose boxes share at least one voxel."""
    lo_a, hi_a = boxes(a, extent)
    lo_b, hi_b = boxes(b, extent)
    inter = (lo_a[:, None] < hi_b[None]) & (lo_b[None] < hi_a[:, None])
    return int(inter.all(-1).sum())


def check_patches(out: Path, image: np.ndarray, labels: np.ndarray, extent: tuple[int, ...]) -> dict:
    """Every stored tile equals the image/labels at its recorded origin; return the group attrs."""
    group = zarr.open_group(str(out), mode="r")
    for part in ("train", "val"):
        origins = group[f"{part}/origins"][...]
        img, lab = group[f"{part}/image"][...], group[f"{part}/labels"][...]
        assert img.dtype == image.dtype and lab.dtype == np.uint8
        assert len(origins) == len(img) == len(lab)
        for o, ti, tl in zip(origins, img, lab):
            index = tuple(slice(int(a), int(a) + e) for a, e in zip(o, extent))
            np.testing.assert_array_equal(ti, image[index].reshape(ti.shape))
            np.testing.assert_array_equal(tl, labels[index].reshape(tl.shape))
    return dict(group.attrs)


def slab_bounds(attrs: dict, part: str, source: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest allowed patch corner of the ``part`` slab of a source (before subtracting extent)."""
    split = attrs["sources"][source]["split"]
    lo = np.array([a for a, _ in split["region"]])
    hi = np.array([b for _, b in split["region"]])
    lo[split["axis"]], hi[split["axis"]] = split[part]
    return lo, hi


def check_disjoint_inside_slabs(attrs: dict, arrays: dict, origins: dict, extent: tuple[int, ...]) -> None:
    """Per source: every patch lies inside its own slab and no validation patch overlaps a training patch."""
    for s in range(len(attrs["sources"])):
        per = {part: origins[part][arrays[f"{part}/source"] == s] for part in ("train", "val")}
        assert len(per["train"]) and len(per["val"])
        for part, o in per.items():
            lo, hi = slab_bounds(attrs, part, s)
            assert ((o >= lo) & (o + np.array(extent) <= hi)).all(), (part, s)
        assert overlapping_pairs(per["train"], per["val"], extent) == 0


def read_origins(out: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(out), mode="r")
    return {part: group[f"{part}/origins"][...] for part in ("train", "val")}


def position_coded(shape: tuple[int, ...], start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image whose grey value is ``start`` + each voxel's flat index, and labels that are a function of position:
    the parity of the voxel's 4-voxel cell, ``(z // 4 + y // 4 + x // 4) % 2``. A patch then says where it came
    from."""
    image = start + np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    return image, cell_parity(np.indices(shape))


def cell_parity(coords: np.ndarray) -> np.ndarray:
    """The labels of :func:`position_coded` at ``coords`` (ndim, ...) int."""
    return (sum(c // 4 for c in coords) % 2).astype(np.uint8)


def write_coded(path: Path, image: np.ndarray, scale: int) -> Path:
    """Write a :func:`position_coded` image with statistics that normalise grey value v to v / scale."""
    return write(path, image, intensity={"p_low": 0.0, "p_high": float(scale)})


def decode(x: np.ndarray, scale: int) -> np.ndarray:
    """The grey values of normalised values ``x`` of a :func:`write_coded` image, as int64."""
    return np.rint(np.asarray(x, np.float64) * scale).astype(np.int64)
