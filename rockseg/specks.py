"""Removing specks: isolated pieces of a phase too small to be real, which make Euler numbers wrong.

A network trained on noisy CT leaves isolated voxels and tiny clusters of the wrong phase. They barely move the
IoU, but each one is a component (or a cavity) of its phase, so a few thousand of them make the pore Euler number
of a segmentation wrong by tens of percent (measured on issue 15's realistic scans). :func:`remove_specks` gives
each speck the label of the phase around it.

A *speck* of a phase is a connected piece of it of at most ``max_voxels`` voxels, connected through faces, edges
and corners (the 26-neighbourhood, as :mod:`rockseg.metrics.euler` counts each phase), with one exception made by
digital topology: in a two-phase segmentation, pieces of the second phase (label 1, solid in rockseg's pore/solid
models) are taken through faces only (the 6-neighbourhood). Those are the cavities the first phase's Euler number
counts: a grain voxel touching a grain only at a corner is, seen from the 26-connected pore, a hole in it.

A block of a larger volume cannot know how large a piece that reaches into its neighbour is, so pieces touching one
of its ``open_faces`` (the faces it shares with other blocks) are kept; the faces of the volume itself are closed.
The result therefore depends on the block edge (recorded with every prediction) and never on the order, part or
worker that runs the blocks. Which ``max_voxels`` a model wants is chosen on its validation tiles
(:func:`rockseg.training.validation.choose_speck_size`) and stored in its model file.

Pure NumPy and scikit-image; no torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from skimage.measure import label as label_components

from rockseg.vocabulary import OUTSIDE

__all__ = ["SPECK_SIZES", "count_pieces", "remove_specks"]

#: the speck sizes (voxels) that training tries on its validation tiles; 0 removes nothing
SPECK_SIZES = (0, 2, 4, 8, 16, 32)


def remove_specks(
    labels: np.ndarray, max_voxels: int, *, classes: int,
    open_faces: Sequence[tuple[bool, bool]] | None = None,
) -> int:
    """Relabel, in place, the specks of every phase of a label region (2D or 3D); return how many voxels were specks.

    Parameters
    ----------
    labels : integer labels 0..classes-1 (and :data:`~rockseg.vocabulary.OUTSIDE`, which is left alone and never
        given to a speck).
    max_voxels : the largest speck, in voxels; 0 removes nothing.
    classes : the number of phases.
    open_faces : per axis, whether the low and the high face are shared with more of the volume (pieces touching
        such a face are kept); default all closed (the region is the whole volume).

    Phases are taken in label order, each on the labels as the previous ones left them. In a two-phase
    segmentation a speck becomes the other phase; with more phases, the phase most of its outside neighbours
    (26-neighbourhood) have, and a speck with no such neighbour (all :data:`OUTSIDE`) is left as it is.
    """
    if max_voxels <= 0 or labels.size == 0:
        return 0
    changed = 0
    for phase in range(classes):
        ids = label_components(labels == phase, connectivity=_connectivity(phase, classes, labels.ndim))
        sizes = np.bincount(ids.ravel())
        small = sizes <= max_voxels
        small[0] = False
        for axis, (low, high) in enumerate(open_faces or ()):
            for is_open, index in ((low, 0), (high, -1)):
                if is_open:
                    small[np.take(ids, index, axis=axis)] = False
        if not small.any():
            continue
        speck = small[ids]
        if classes == 2:
            labels[speck] = 1 - phase  # the only other phase
        else:
            _to_majority(labels, np.where(speck, ids, 0), classes)
        changed += int(speck.sum())
    return changed


def count_pieces(labels: np.ndarray, phase: int, classes: int) -> int:
    """How many pieces ``phase`` has in ``labels``, connected as :func:`remove_specks` connects them."""
    return int(label_components(labels == phase, connectivity=_connectivity(phase, classes, labels.ndim)).max())


def _connectivity(phase: int, classes: int, ndim: int) -> int:
    """Faces only for the second phase of a two-phase segmentation (the first phase's cavities), else all
    neighbours (scikit-image's connectivity: 1 faces, ``ndim`` faces, edges and corners)."""
    return 1 if classes == 2 and phase == 1 else ndim


def _to_majority(labels: np.ndarray, speck_ids: np.ndarray, classes: int) -> None:
    """Give each speck (``speck_ids`` > 0) the most common phase among the voxels just outside it (each
    speck voxel's 26 neighbours that are not in the speck and not :data:`OUTSIDE` vote)."""
    where = np.nonzero(speck_ids)
    specks, own = np.unique(speck_ids[where], return_inverse=True)
    codes = []
    for offset in itertools.product((-1, 0, 1), repeat=labels.ndim):
        if not any(offset):
            continue
        near = tuple(np.clip(c + o, 0, n - 1) for c, o, n in zip(where, offset, labels.shape))
        phase = labels[near].astype(np.int64)
        votes = (speck_ids[near] == 0) & (phase != OUTSIDE)  # a neighbour of another phase, not in a speck
        codes.append(own[votes] * classes + phase[votes])
    tally = np.bincount(np.concatenate(codes), minlength=len(specks) * classes).reshape(-1, classes)
    voted = tally.sum(1) > 0
    labels[where] = np.where(voted[own], tally.argmax(1)[own], labels[where])
