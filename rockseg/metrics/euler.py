"""Euler numbers of the phases of a label volume: the window lookup table and the counting of a block's windows.

The Euler number is additive over 2x2x2 (2x2 in 2D) windows of voxels: summed over every window of a volume padded
by one voxel of background, the contributions of :func:`euler_lut` give ``2**d`` times the Euler number. A block of
a larger volume counts the windows that lie inside it (:func:`block_euler`) and :mod:`rockseg.metrics.seams` the
windows that straddle blocks, from the faces the blocks return, so the sum is exact for any blocking.

The lookup table is built from first principles: a phase is turned into a cubical complex, whose Euler
characteristic (vertices - edges + faces - cubes) is split over the windows that share each cell.

* ``connectivity=1`` (6-neighbourhood in 3D, 4 in 2D): voxels are the vertices of the unit lattice, and an edge,
  square or cube of the lattice belongs to the complex when all its corner voxels are in the phase.
* ``connectivity=3`` (26-neighbourhood in 3D, 8 in 2D): each voxel is a closed unit cube, so cubes that touch at an
  edge or a corner are connected. The cells of their union are dual to the cells of the lattice window: the
  window's centre point, the edges and faces around it, and the voxels' cubes; a dual cell belongs to the union
  when any voxel around it is in the phase.

A cell of dimension ``k`` of the lattice is shared by ``2**(d - k)`` windows (its dual cell by ``2**k``), so the
fractional weights become integers once scaled by ``2**d`` (8 in 3D, 4 in 2D).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from rockseg.errors import InputError
from rockseg.vocabulary import CONNECTIVITIES

if TYPE_CHECKING:
    from rockseg.metrics.blockwise import Plan

__all__ = [
    "block_euler", "check_connectivity", "compact_lut", "euler_lut", "euler_number", "plane_sums", "scaled_euler",
    "unscale",
]


def check_connectivity(connectivity: int, *, spatial_dims: int = 3) -> int:
    """Return ``connectivity`` if it is one of :data:`CONNECTIVITIES`, else raise :class:`InputError`."""
    if isinstance(connectivity, bool) or connectivity not in CONNECTIVITIES:
        full = 26 if spatial_dims == 3 else 8
        faces = 6 if spatial_dims == 3 else 4
        raise InputError(
            f"connectivity {connectivity!r} is not supported: use 1 ({faces}-neighbourhood) "
            f"or 3 ({full}-neighbourhood, the default)"
        )
    return int(connectivity)


def euler_lut(spatial_dims: int, connectivity: int) -> np.ndarray:
    """Lookup table of the Euler-number contribution of every 2x2x2 (or 2x2) window of a binary volume.

    Parameters
    ----------
    spatial_dims : 2 or 3.
    connectivity : 1 (neighbours across faces: 6 in 3D, 4 in 2D) or 3 (full neighbourhood: 26 in 3D, 8 in 2D).

    Returns
    -------
    lut : (2 ** 2**spatial_dims,) array of int64 (256 entries in 3D, 16 in 2D), read-only
        ``2**spatial_dims`` times the contribution of a window to the Euler number. The voxel at offset
        ``(oz, oy, ox)`` (each 0 or 1) from the window's origin is bit ``4 * oz + 2 * oy + ox`` of the window's
        index (``(oy, ox)`` is bit ``2 * oy + ox`` in 2D), set when the voxel is in the phase.
        Summed over all windows of a volume padded by one voxel of background, the table gives
        ``2**spatial_dims`` times the Euler number.

    Examples
    --------
    >>> lut = euler_lut(3, 3)
    >>> int(lut[0b00000001]), int(lut[0b11111111])  # one voxel in a corner; a full window
    (1, 0)
    """
    if spatial_dims not in (2, 3):
        raise InputError(f"spatial_dims {spatial_dims!r} is not supported: use 2 or 3")
    return _euler_lut(spatial_dims, check_connectivity(connectivity, spatial_dims=spatial_dims) == 3)


@functools.cache
def _euler_lut(d: int, full: bool) -> np.ndarray:
    corners = list(itertools.product((0, 1), repeat=d))  # enumeration order = bit order (first axis most significant)
    # Every cell of the unit cube [0, 1]^d: each axis is fixed at 0, fixed at 1, or free (None).
    cells = []
    for spec in itertools.product((0, 1, None), repeat=d):
        mask = 0
        for bit, corner in enumerate(corners):
            if all(s is None or c == s for s, c in zip(spec, corner)):
                mask |= 1 << bit
        cells.append((sum(s is None for s in spec), mask))
    lut = np.zeros(1 << len(corners), np.int64)
    for config in range(lut.size):
        total = 0
        for k, mask in cells:
            if full:
                # Dual cell of dimension d - k, shared by 2**k windows: present when any voxel around it is set.
                if config & mask:
                    total += (-1) ** (d - k) * 2**k
            elif config & mask == mask:
                # Lattice cell of dimension k, shared by 2**(d - k) windows: present when all its corners are set.
                total += (-1) ** k * 2**k
        lut[config] = total
    lut.flags.writeable = False
    return lut


def _window_configs(mask: np.ndarray, axes: Sequence[int] | None = None) -> np.ndarray:
    """Index (see :func:`euler_lut`) of every window of a boolean volume spanning 2 voxels along ``axes``.

    ``axes`` default to all axes (2x2x2 / 2x2 windows, shape ``mask.shape - 1``); two axes of a 3D volume give the
    2x2 windows of every plane across the third axis (bit order of the 2D table, the first of ``axes`` most
    significant).
    """
    config = mask.view(np.uint8)
    nbits = 1
    # One axis at a time (last first), so 3 shift-and-or passes build the 8-bit index instead of 8.
    for axis in reversed(range(mask.ndim) if axes is None else sorted(axes)):
        lower = tuple(slice(0, -1) if i == axis else slice(None) for i in range(mask.ndim))
        upper = tuple(slice(1, None) if i == axis else slice(None) for i in range(mask.ndim))
        merged = config[upper] << nbits
        merged |= config[lower]
        config, nbits = merged, 2 * nbits
    return config


@functools.cache
def compact_lut(d: int, connectivity: int) -> np.ndarray:
    # Every entry lies in [-6, 4]: int8 makes the lookup of a whole block cheap.
    return euler_lut(d, connectivity).astype(np.int8)


def scaled_euler(mask: np.ndarray, lut8: np.ndarray) -> int:
    """``2**d`` times the Euler number of the windows of a boolean volume (padding included in ``mask``)."""
    if min(mask.shape) < 2:
        return 0
    return int(lut8[_window_configs(mask)].sum(dtype=np.int64))


def euler_number(volume: np.ndarray, *, connectivity: int = 3) -> int:
    """Euler number of the nonzero voxels of an in-memory volume, as :func:`skimage.measure.euler_number`.

    In 3D it is the number of objects minus the number of tunnels plus the number of cavities; in 2D the number
    of objects minus the number of holes. The volume is taken as surrounded by background.

    Parameters
    ----------
    volume : (Z, Y, X) or (Y, X) array
        Nonzero voxels are the phase.
    connectivity : 1 (6-neighbourhood in 3D, 4 in 2D) or 3 (26-neighbourhood in 3D, 8 in 2D; the default).
        skimage's 2D ``connectivity=2`` is this function's 3.

    Returns
    -------
    int

    Examples
    --------
    >>> import numpy as np
    >>> cube = np.zeros((5, 5, 5), np.uint8)
    >>> cube[1:4, 1:4, 1:4] = 1
    >>> euler_number(cube)
    1
    >>> cube[2, 2, 2] = 0  # a cavity
    >>> euler_number(cube)
    2
    """
    volume = np.asarray(volume)
    if volume.ndim not in (2, 3):
        raise InputError(f"volume has shape {volume.shape}: the Euler number needs a 2D or 3D volume")
    lut8 = compact_lut(volume.ndim, check_connectivity(connectivity, spatial_dims=volume.ndim))
    return unscale(scaled_euler(np.pad(volume != 0, 1), lut8), volume.ndim)


def unscale(scaled: int, d: int) -> int:
    value, rest = divmod(scaled, 1 << d)
    if rest:
        raise RuntimeError(f"internal error: Euler sum {scaled} is not a multiple of {1 << d}")
    return value


def plane_sums(phase: np.ndarray, axis: int, lut2: np.ndarray) -> np.ndarray:
    """4 times the 2D Euler contributions of the 2x2 windows of every plane of ``phase`` across ``axis``.

    One value per index along ``axis`` (int64); the planes of a padded mask that are all padding give 0.
    """
    plane = tuple(i for i in range(phase.ndim) if i != axis)
    if min(phase.shape[i] for i in plane) < 2:
        return np.zeros(phase.shape[axis], np.int64)
    return lut2[_window_configs(phase, plane)].sum(axis=plane, dtype=np.int64)


def block_euler(
    raw: np.ndarray,
    raw_in: np.ndarray | None,
    counts: np.ndarray,
    pad_lo: Sequence[bool],
    pad_hi: Sequence[bool],
    n_slices: int,
    plan: Plan,
) -> tuple[dict[int, int], dict[int, np.ndarray]]:
    """Scaled Euler sums, per label, of the windows inside a block (padded at the volume's faces); per slice too.

    ``raw`` is exactly the block, no halo; ``counts`` are its label counts. The windows that straddle the block's
    faces are counted by :mod:`rockseg.metrics.seams` from the faces the blocks return. Voxels outside the mask
    (``raw_in`` False) are background for every phase, and so is the padding at the volume's faces.
    """
    present = np.flatnonzero(counts).tolist()
    padded_shape = tuple(n + lo + hi for n, lo, hi in zip(raw.shape, pad_lo, pad_hi))
    place = tuple(slice(int(lo), int(lo) + n) for n, lo in zip(raw.shape, pad_lo))
    phase = np.zeros(padded_shape, np.bool_)
    inner = phase[place]
    whole: dict[int, int] = {}
    per_slice: dict[int, np.ndarray] = {}
    for label in present:
        # The padding is background for every phase, the one labelled 0 included.
        np.equal(raw, label, out=inner)
        if raw_in is not None:
            inner &= raw_in
        value = scaled_euler(phase, plan.lut)
        if value:
            whole[label] = value
        if plan.axis is not None:
            first = int(pad_lo[plan.axis])
            values = plane_sums(phase, plan.axis, plan.slice_lut)[first : first + n_slices]
            if values.any():
                per_slice[label] = values
    return whole, per_slice
