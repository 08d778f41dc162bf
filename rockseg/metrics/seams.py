"""Seams: the Euler windows that straddle blocks, counted from the faces the blocks return.

A block reads exactly its own voxels, so every chunk of the store is decoded once, and counts the windows that lie
inside it, padded with background at the volume's faces (:func:`rockseg.metrics.euler.block_euler`). Every other
window of the padded volume straddles the boundary between neighbouring blocks along a set S of one, two or three
axes, and lies inside one block's extent (its padding included) along the others. Such a window only sees voxels
of the blocks' outer planes, so each block returns its faces (:class:`Faces`: its first and last plane along each
axis where it has a neighbour), and :class:`SeamCounter` assembles, for every 2**|S| neighbouring blocks, the
*piece*: two voxels thick across S (the last plane of the lower blocks, the first plane of the upper ones), the
blocks' extent along the other axes, padded at the volume's faces. The windows inside the blocks and those of the
pieces are every window of the padded volume exactly once, so the Euler sums are exact for any blocking.

The counter keeps, of each block's faces, only the parts that pieces still waiting need (a plane compressed, a
line, a voxel) and drops them once the piece is counted: with blocks arriving in :func:`block_order` it holds
about one cross-section of the volume's planes, compressed, whatever the volume's length.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
from numcodecs import Zstd

from rockseg.metrics.euler import plane_sums, scaled_euler
from rockseg.metrics.tally import NLABELS, Slices, Tally

__all__ = ["NOTHING", "Faces", "SeamCounter", "block_faces", "block_order"]

#: Value of a face voxel that is background for every phase (outside the mask, or the padding of a piece).
NOTHING = 256
# Planes a counter keeps until their neighbours arrive are compressed (fast, and label planes shrink many times),
# by a codec of the counter's own: a Zstd codec must not be shared between threads.
_ZSTD_LEVEL = 1

Index = tuple[int, ...]
Edges = Sequence[Sequence[tuple[int, int]]]  # per axis, the (lo, hi) of each block of a grid


class Faces:
    """The outer planes of a block (or of a unit of blocks): for each axis, ``[first, last]``, None at the volume.

    The planes are labels (uint8), or uint16 with :data:`NOTHING` outside the mask. A plain class (Dask unpacks
    dataclass arguments).
    """

    __slots__ = ("pred", "truth")

    def __init__(self, pred: list[list[np.ndarray | None]], truth: list[list[np.ndarray | None]] | None) -> None:
        self.pred = pred
        self.truth = truth


def block_faces(
    raw: np.ndarray, inside: np.ndarray | None, lo: Sequence[int], hi: Sequence[int], size: Sequence[int]
) -> list[list[np.ndarray | None]]:
    """The first and last plane of a block along each axis where it has a neighbour (copies, not views)."""

    def plane(axis: int, i: int) -> np.ndarray:
        labels = np.take(raw, i, axis=axis)
        if inside is None:
            return labels
        return np.where(np.take(inside, i, axis=axis), labels, np.uint16(NOTHING))

    return [
        [plane(a, 0) if lo[a] > 0 else None, plane(a, -1) if hi[a] < size[a] else None] for a in range(raw.ndim)
    ]


def block_order(counts: Sequence[int]) -> Iterator[Index]:
    """Every block index of a grid of ``counts`` blocks per axis, the axis with the most blocks outermost.

    In this raster order the seams wait for at most about one cross-section of blocks, the smallest one.
    """
    axes = sorted(range(len(counts)), key=lambda a: -counts[a])
    for moved in itertools.product(*(range(counts[a]) for a in axes)):
        index = [0] * len(counts)
        for a, i in zip(axes, moved):
            index[a] = i
        yield tuple(index)


class SeamCounter:
    """Counts the windows straddling the blocks of a grid from their faces, as the blocks arrive in any order."""

    def __init__(self, edges: Edges, size: Sequence[int], lut: np.ndarray, slice_axis: int | None,
                 slice_lut: np.ndarray | None, with_truth: bool, *, compress: bool = True) -> None:
        self.edges = edges
        self.size = tuple(size)
        self.lut = lut
        self.slice_axis = slice_axis
        self.slice_lut = slice_lut
        self.with_truth = with_truth
        d = len(size)
        self.sets = [s for r in range(1, d + 1) for s in itertools.combinations(range(d), r)]
        # Per piece not yet counted, the parts its blocks have given: {(corner, S): {sigma: (pred part, truth part)}}
        self.waiting: dict[tuple[Index, tuple[int, ...]], dict[tuple[int, ...], tuple[_Part, _Part | None]]] = {}
        self.euler: list[dict[int, int]] = [{}, {}]  # pred, truth: label -> scaled sum
        self.slices: list[dict[int, np.ndarray]] = [{}, {}]  # pred, truth: label -> per-slice scaled sums
        self.start = 0 if slice_axis is None else edges[slice_axis][0][0]
        self.n_slices = 0 if slice_axis is None else edges[slice_axis][-1][1] - self.start
        self.peak_bytes = 0  # largest total size of the parts held at once (planes compressed)
        self.peak_pieces = 0  # largest number of pieces waiting for a block at once
        self._held_bytes = 0
        self._codec = Zstd(level=_ZSTD_LEVEL) if compress else None

    def add(self, index: Index, faces: Faces) -> None:
        """Take the faces of block ``index``: count every piece whose blocks have all arrived, keep the rest.

        Only the part of the faces that a waiting piece needs is kept (a plane compressed, a line, a voxel).
        """
        d = len(self.size)
        for s in self.sets:
            for sigma in itertools.product((0, 1), repeat=len(s)):
                corner = list(index)
                for a, side in zip(s, sigma):
                    corner[a] -= side
                if not all(0 <= corner[a] and corner[a] + 1 < len(self.edges[a]) for a in s):
                    continue
                key = (tuple(corner), s)
                parts = self.waiting.setdefault(key, {})
                codec = None if len(parts) + 1 == 1 << len(s) else self._codec  # the last part is used at once
                parts[sigma] = (
                    _Part(_corner_part(faces.pred, s, sigma, d), codec),
                    None if faces.truth is None else _Part(_corner_part(faces.truth, s, sigma, d), codec),
                )
                self._held_bytes += sum(p.nbytes for p in parts[sigma] if p is not None)
                if len(parts) == 1 << len(s):
                    del self.waiting[key]
                    self._held_bytes -= sum(p.nbytes for pair in parts.values() for p in pair if p is not None)
                    self._count(key[0], s, parts)
        self.peak_bytes = max(self.peak_bytes, self._held_bytes)
        self.peak_pieces = max(self.peak_pieces, len(self.waiting))

    def _count(self, corner: Index, s: tuple[int, ...], parts: dict[tuple[int, ...], tuple[_Part, _Part | None]]) -> None:
        d = len(self.size)
        lo = [self.edges[a][corner[a]][0] for a in range(d)]
        hi = [self.edges[a][corner[a]][1] for a in range(d)]
        pad_lo = [a not in s and lo[a] == 0 for a in range(d)]
        shape = [2 if a in s else hi[a] - lo[a] + pad_lo[a] + (hi[a] == self.size[a]) for a in range(d)]
        slice_axis = None if self.slice_axis in s else self.slice_axis
        for which in range(2 if self.with_truth else 1):
            piece = np.full(shape, NOTHING, np.uint16)
            for sigma, pair in parts.items():
                piece[_target(s, sigma, lo, hi, pad_lo)] = pair[which].array(self._codec)  # type: ignore[union-attr]
            self._add_piece(piece, which, slice_axis, lo, hi, pad_lo)

    def _add_piece(self, piece: np.ndarray, which: int, slice_axis: int | None, lo: list[int], hi: list[int],
                   pad_lo: list[bool]) -> None:
        present = np.flatnonzero(np.bincount(piece.ravel(), minlength=NOTHING + 1)[:NOTHING])
        euler, slices = self.euler[which], self.slices[which]
        for label in present.tolist():
            phase = piece == label
            value = scaled_euler(phase, self.lut)
            if value:
                euler[label] = euler.get(label, 0) + value
            if slice_axis is not None:
                first = int(pad_lo[slice_axis])
                values = plane_sums(phase, slice_axis, self.slice_lut)[first : first + hi[slice_axis] - lo[slice_axis]]
                if values.any():
                    total = slices.setdefault(label, np.zeros(self.n_slices, np.int64))
                    total[lo[slice_axis] - self.start : hi[slice_axis] - self.start] += values

    def tally(self) -> Tally:
        """The seams' Euler sums as a tally (no voxels), to merge with the blocks' tallies."""
        slices = None
        if self.slice_axis is not None:
            k = 1 + max([0, *self.slices[0], *self.slices[1]])
            zeros = np.zeros((self.n_slices, k), np.int64)
            truth = self.with_truth
            slices = Slices(
                start=self.start, voxels=np.zeros(self.n_slices, np.int64), counts_pred=zeros,
                euler_pred=_columns(self.slices[0], self.n_slices, k), counts_true=zeros if truth else None,
                tp=zeros if truth else None, euler_true=_columns(self.slices[1], self.n_slices, k) if truth else None,
            )
        return Tally(
            counts_pred=np.zeros(NLABELS, np.int64),
            counts_true=np.zeros(NLABELS, np.int64) if self.with_truth else None,
            confusion=np.zeros((1, 1), np.int64) if self.with_truth else None,
            euler_pred=dict(self.euler[0]),
            euler_true=dict(self.euler[1]),
            slices=slices,
        )


def _corner_part(faces: list[list[np.ndarray | None]], s: tuple[int, ...], sigma: tuple[int, ...], d: int) -> np.ndarray:
    """What block ``sigma`` of a piece across ``s`` gives: its outer plane, line or voxel facing the others."""
    plane = faces[s[0]][1 - sigma[0]]  # the lower block's last plane, the upper block's first
    assert plane is not None, "a block with a neighbour returns its face"
    index: list[int | slice] = []
    for b in range(d):
        if b == s[0]:
            continue
        index.append((-1 if sigma[s.index(b)] == 0 else 0) if b in s else slice(None))
    part = plane[tuple(index)]
    return part if len(s) == 1 else np.array(part)  # a copy of a line or a voxel: not the whole plane kept alive


class _Part:
    """A part of a block's faces kept for a piece: planes compressed (labels compress well), lines as they are."""

    __slots__ = ("data", "shape", "dtype")

    def __init__(self, part: np.ndarray, codec: Zstd | None) -> None:
        self.shape, self.dtype = part.shape, part.dtype
        compress = codec is not None and part.ndim >= 2
        self.data: np.ndarray | bytes = codec.encode(np.ascontiguousarray(part)) if compress else part

    @property
    def nbytes(self) -> int:
        return len(self.data) if isinstance(self.data, bytes) else self.data.nbytes

    def array(self, codec: Zstd | None) -> np.ndarray:
        if not isinstance(self.data, bytes):
            return self.data
        assert codec is not None, "compressed by this counter's codec"
        return np.frombuffer(codec.decode(self.data), self.dtype).reshape(self.shape)


def _target(s: tuple[int, ...], sigma: tuple[int, ...], lo: list[int], hi: list[int], pad_lo: list[bool]) -> tuple:
    return tuple(
        sigma[s.index(a)] if a in s else slice(int(pad_lo[a]), int(pad_lo[a]) + hi[a] - lo[a]) for a in range(len(lo))
    )


def _columns(per_label: dict[int, np.ndarray], n: int, k: int) -> np.ndarray:
    out = np.zeros((n, k), np.int64)
    for label, values in per_label.items():
        out[:, label] = values
    return out
