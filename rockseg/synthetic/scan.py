"""The synthetic rock and its CT image together, in memory or as lazy Dask arrays made block by block.

A block is rendered from its own region of the rock grown by the blur halo (:func:`rockseg.synthetic.ct.blur_halo`),
so the lazy arrays equal the in-memory ones, voxel for voxel, for any chunking.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.synthetic.ct import blur_halo, ct_region
from rockseg.synthetic.parameters import (
    PHASES,
    CTOptions,
    check_seed,
    check_shape,
    ct_options,
    rock_options,
    split_options,
)
from rockseg.synthetic.rock import Rock, labels_region, solve_rock

__all__ = ["synthetic_rock"]


def _render(seed: int, rock: Rock, ct: CTOptions, shape: Sequence[int], lo: Sequence[int],
            hi: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of the block [lo, hi) of a (Z, Y, X) volume, computed from the block and its blur halo."""
    halo = blur_halo(ct)
    ext_lo = [max(0, a - halo) for a in lo]
    ext_hi = [min(n, b + halo) for b, n in zip(hi, shape, strict=True)]
    labels = labels_region(seed, rock, ext_lo, ext_hi)
    keep = tuple(slice(a - e, b - e) for a, b, e in zip(lo, hi, ext_lo, strict=True))
    return ct_region(seed, ct, labels, ext_lo, shape, keep), labels[keep]


def _render_block(seed: int, rock: Rock, ct: CTOptions, shape: tuple[int, ...], lo: tuple[int, ...],
                  hi: tuple[int, ...], ndim: int) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _render(seed, rock, ct, shape, lo, hi)
    if ndim == 2:
        return image[0], labels[0]
    return image, labels


def synthetic_rock(
    shape: Sequence[int], *, seed: int = 0, chunks: Any = None, **options: Any
) -> tuple[Any, Any]:
    """A seeded synthetic sandstone and its simulated micro-CT image.

    Equal to ``(simulate_ct(labels, seed=seed, ...), labels)`` with ``labels = synthetic_labels(shape,
    seed=seed, ...)``. With ``chunks`` the two are lazy Dask arrays computed block by block (each block reads
    only its own blur halo), identical to the in-memory arrays for any chunking, so a volume of any size can be
    streamed to disk, e.g. with ``dask.array.to_zarr``; a block needs about 30 bytes per voxel of the block and
    its halo while it is made.

    Parameters
    ----------
    shape : (Z, Y, X) or (Y, X) tuple of int
        Size in voxels; a (Y, X) shape is the first slice of the 3D rock, imaged in 2D.
    seed : int
        Same seed, same rock and image.
    chunks : int, tuple or Dask chunk specification, optional
        Chunking of the Dask arrays to return; None returns NumPy arrays.
    **options
        The options of :func:`synthetic_labels` (geometry) and :func:`simulate_ct` (image).

    Returns
    -------
    image : (Z, Y, X) or (Y, X) array of uint8
        Grey values.
    labels : array of uint8, same shape
        Phase labels, see :data:`PHASES`.

    Raises
    ------
    InputError
        On a bad shape, seed, chunking or option (an unknown option name included).
    """
    size = check_shape(shape)
    seed = check_seed(seed)
    rock_opts, ct_opts = split_options(options)
    rock = solve_rock(rock_options(**rock_opts))
    ct = ct_options(**ct_opts)
    if len(ct.grey) < len(PHASES):
        raise InputError(f"synthetic rock option grey={ct.grey!r} needs {len(PHASES)} values, one per phase")
    size3 = (1, *size) if len(size) == 2 else size
    if chunks is None:
        image, labels = _render(seed, rock, ct, size3, (0, 0, 0), size3)
        return image.reshape(size), labels.reshape(size)
    return _lazy_rock(seed, rock, ct, size, chunks)


def _lazy_rock(seed: int, rock: Rock, ct: CTOptions, size: tuple[int, ...], chunks: Any) -> tuple[Any, Any]:
    import dask.array as da
    from dask.array.core import normalize_chunks
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    try:
        normal = normalize_chunks(chunks, size, dtype=np.uint8)
    except (ValueError, TypeError) as err:
        raise InputError(f"synthetic rock chunks={chunks!r} do not fit shape {size}: {err}") from None
    if any(c <= 0 for axis in normal for c in axis):
        raise InputError(f"synthetic rock chunks={chunks!r} hold an empty chunk: give positive chunk sizes")
    size3 = (1, *size) if len(size) == 2 else size
    token = tokenize(seed, rock, ct, size, normal)
    pair, names = f"synthetic-rock-{token}", (f"synthetic-image-{token}", f"synthetic-labels-{token}")
    starts = [np.concatenate([[0], np.cumsum(axis)]).tolist() for axis in normal]
    tasks: dict[Any, Any] = {}
    picks: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})
    for index in product(*(range(len(axis)) for axis in normal)):
        lo = tuple(int(starts[a][i]) for a, i in enumerate(index))
        hi = tuple(int(starts[a][i + 1]) for a, i in enumerate(index))
        if len(size) == 2:
            lo, hi = (0, *lo), (1, *hi)
        task = functools.partial(_render_block, seed, rock, ct, size3, lo, hi, len(size))
        tasks[(pair, *index)] = (task,)
        for which in (0, 1):
            picks[which][(names[which], *index)] = (operator.getitem, (pair, *index), which)
    meta = np.empty((0,) * len(size), np.uint8)
    out = []
    for which in (0, 1):
        graph = HighLevelGraph({pair: tasks, names[which]: picks[which]}, {pair: set(), names[which]: {pair}})
        out.append(da.Array(graph, names[which], normal, dtype=np.uint8, meta=meta))
    return out[0], out[1]
