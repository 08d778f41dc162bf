"""Fresh random training patches, drawn for every step from the training regions of a tile set.

A tile set of format version 3 holds the *training region* of each image/label pair: its training slab, every voxel
a training patch may come from and none of its validation slab (:mod:`rockseg.training.tileset`). With
``sampling="random"`` (the default) :func:`rockseg.training.train` draws each training batch afresh from them rather
than going over the stored patches again: :class:`_Regions` holds the regions in memory and draws patches the way
the tile set drew its fixed ones (:meth:`_Regions.draw`):

- the pair of each patch is drawn in proportion to the volume of its region;
- the patch corner is uniform over that region or, for a share ``balanced_share`` of the patches when the tile set's
  sampling is ``"balanced"``, the patch is centred on a voxel of a phase drawn uniformly among the phases present in
  the region (:func:`rockseg.training.sampling.mixed_origins`, with one
  :class:`~rockseg.training.sampling.ClassIndex` per region built at the start);
- 2D tile sets draw planes across their slice axis;
- with sparse labels (unlabelled voxels in the regions) every patch is centred on a labelled voxel.

Every patch lies inside its region, so no training patch touches a validation voxel. Each is normalised with its own
pair's intensity statistics as the stored tiles are (:func:`rockseg.training.data.tile_normalization`), then
augmented (:func:`rockseg.training.data._as_batch`). :func:`_region_batch` draws batch ``g`` of epoch ``e`` from
``(seed, e, g)`` alone, so runs are reproducible, a resumed run draws what a straight run draws, and background
threads may prepare batches in any order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rockseg.training.augment import AugmentConfig
from rockseg.training.data import _as_batch, tile_normalization
from rockseg.training.pairs import _PatchReader
from rockseg.training.sampling import ClassIndex, Region, mixed_origins, patch_extent, scan_block
from rockseg.training.tileset import ignored_label, read_regions
from rockseg.vocabulary import AXES

#: A balanced patch reads one block of its region's labels to find its centre: blocks of about this many voxels.
INDEX_BLOCK_VOXELS = 2**16


@dataclass(frozen=True)
class _Region:
    """One pair's training region in memory: where it lies, a reader of its patches, and where its phases are."""

    slab: Region  # image coordinates
    reader: _PatchReader
    index: ClassIndex | None  # None when no patch is balanced


class _Regions:
    """The training regions of a tile set, and how patches are drawn from them (module docstring).

    Parameters
    ----------
    regions : per source, ``(origin, image, labels)`` as :func:`rockseg.training.tileset.read_regions` returns.
    attrs : the tile set's attributes (``dims``, ``size``, ``slice_axis``, ``sampling``).
    stats : the intensity statistics of each source.
    path : the tile set, for messages.
    """

    def __init__(
        self, regions: Sequence[tuple[Sequence[int], np.ndarray, np.ndarray]], *, attrs: Mapping[str, Any],
        stats: Sequence[Mapping[str, Any]], path: Path,
    ) -> None:
        dims, size, slice_axis = int(attrs["dims"]), int(attrs["size"]), attrs.get("slice_axis")
        ndim = regions[0][1].ndim
        self.extent = patch_extent(size, dims=dims, ndim=ndim, slice_axis=slice_axis)
        self.patch = (size,) * dims
        sampling = attrs.get("sampling") or {}
        self.share = float(sampling.get("balanced_share", 0.0)) if sampling.get("method") == "balanced" else 0.0
        self.stats = list(stats)
        dtypes = {np.dtype(image.dtype) for _, image, _ in regions}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)  # as the stored tiles
        squeeze = AXES.index(slice_axis or "z") if dims == 2 and ndim == 3 else None
        self.regions: list[_Region] = []
        for origin, image, labels in regions:
            slab = tuple(slice(int(o), int(o) + n) for o, n in zip(origin, image.shape))
            reader = _PatchReader(image, labels, origin, squeeze)
            index = None
            unlabelled = ignored_label(dict(attrs))
            if self.share or unlabelled is not None:  # sparse labels: patches around labelled voxels
                block = scan_block((1,) * ndim, image.shape, voxels=INDEX_BLOCK_VOXELS)
                index = ClassIndex(reader.read_labels, slab, block, lab_path=path, unlabelled=unlabelled)
            self.regions.append(_Region(slab, reader, index))
        voxels = np.array([math.prod(image.shape) for _, image, _ in regions], np.float64)
        self.weights = voxels / voxels.sum()

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` patches: the source of each (n,) int64 and its corner (n, ndim) int64, image coordinates.

        The number of balanced patches is ``share * n`` rounded up or down at random, so that it is right on
        average for any batch size.
        """
        source = rng.choice(len(self.regions), size=n, p=self.weights)
        exact = self.share * n
        balanced = np.arange(n) < int(exact) + int(rng.random() < exact - int(exact))
        origins = np.zeros((n, len(self.extent)), np.int64)
        for s in np.unique(source):
            pick = np.flatnonzero(source == s)
            region = self.regions[int(s)]
            origins[pick] = mixed_origins(region.index, region.slab, self.extent, len(pick),
                                          int(balanced[pick].sum()), rng)
        return source, origins

    def read(self, source: np.ndarray, origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The patches at ``origins`` of their ``source`` regions: (n, *patch) grey values and uint8 labels."""
        images = np.empty((len(source), *self.patch), self.dtype)
        labels = np.empty((len(source), *self.patch), np.uint8)
        for i, (s, origin) in enumerate(zip(source, origins)):
            images[i], labels[i] = self.regions[int(s)].reader.read(origin, self.extent)
        return images, labels


def _load_regions(
    path: Any, attrs: Mapping[str, Any], stats: Sequence[Mapping[str, Any]],
) -> _Regions | None:
    """The training regions of the tile set at ``path``, ready to draw from; None if it holds none."""
    regions = read_regions(path, dict(attrs))
    return None if regions is None else _Regions(regions, attrs=attrs, stats=stats, path=Path(path))


def _region_batch(
    regions: _Regions, n: int, *, augment: AugmentConfig, rng: np.random.Generator, pin: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``n`` fresh patches, drawn, normalised and augmented with ``rng``: tensors (n, 1, *S), (n, *S)."""
    source, origins = regions.draw(n, rng)
    images, labels = regions.read(source, origins)
    lo, inv = tile_normalization(regions.stats, source, n)
    return _as_batch(images, labels, lo, inv, augment=augment, rng=rng, pin=pin)
