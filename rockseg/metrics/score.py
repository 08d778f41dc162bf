"""score_volumes: exact, lazy scoring of label volumes, in three steps: check, plan, run.

:func:`score_volumes` is the library behind ``rockseg score``. It walks the volume block by block (blocks made of
whole chunks of the prediction store, never straddling a shard), on this process's threads or on a Dask cluster
(``scheduler``), with a bounded number of tasks in flight, so memory stays bounded by a few blocks whatever the
volume size (the caller also holds about one cross-section of block faces, compressed), and every number it
reports is exact:

* The confusion matrix is a sum of per-block confusion matrices; IoU, Dice, precision, recall, accuracy and the
  phase fractions follow from it exactly.
* The Euler number is additive over 2x2x2 (2x2 in 2D) windows of voxels. With the volume padded by background at
  its faces, each block counts the windows inside it, reading exactly its own voxels (each chunk is decoded once),
  and the windows straddling blocks are counted from the faces the blocks return (:mod:`rockseg.metrics.seams`),
  so the sum equals the whole-volume value for any chunking. It equals
  ``skimage.measure.euler_number(volume == label, connectivity=c)`` exactly.
* Per slice (``per_slice="z"``...): each block also counts the confusion of each of its slices, and the 2x2
  windows of each slice (inside it, and across its faces through the seams), so per-slice IoU and 2D Euler numbers
  are exact too.
* A mask leaves voxels out: they are not counted, and they are background of every phase for the Euler numbers,
  as if the volume ended at the mask's boundary.

The steps: :func:`_check` validates every option before any block is read (a bad option found an hour into a run
is the worst error); :func:`_work` gathers what every task needs; :func:`_sum_units` runs one task per unit (a
shard of a sharded store, else a block: :mod:`rockseg.metrics.units`) with :func:`rockseg.cluster.run_bounded`
and sums their tallies and the seams between them as they come in; :func:`_finish` turns the sum into the score
document. ``score_volumes`` itself is long only by its docstring, which is the contract of the ``score --json``
document.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.io.stores import check_crop, phases_of
from rockseg.metrics.blockwise import Mask, Plan, Volume, axis_edges, block_base, grow_block
from rockseg.metrics.document import per_slice_document, score_document
from rockseg.metrics.euler import check_connectivity, compact_lut
from rockseg.cluster import run_bounded
from rockseg.metrics.seams import SeamCounter, block_order
from rockseg.metrics.tally import Tally, merge
from rockseg.metrics.units import MERGE_EVERY, Work, score_unit, unit_shape
from rockseg.vocabulary import AXES, MAX_LABEL

__all__ = ["score_volumes"]

_NUMPY_BASE_BLOCK = 64


def score_volumes(
    pred: Any,
    truth: Any = None,
    *,
    connectivity: int = 3,
    phases: Mapping[int, str] | None = None,
    strict_phases: bool = False,
    ignore: Sequence[int] = (),
    mask: Any = None,
    per_slice: str | int | None = None,
    crop: tuple[slice, ...] | None = None,
    num_workers: int | None = None,
    pred_name: str = "prediction",
    truth_name: str = "truth",
    mask_name: str = "mask",
    block_shape: Sequence[int] | None = None,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Score a label volume, against a true one when given, exactly and chunk by chunk.

    Parameters
    ----------
    pred : (Z, Y, X) or (Y, X) zarr.Array (v2 or v3) or NumPy array of integer labels 0..255
        The predicted labels. Read block by block, never whole.
    truth : same shape as ``pred``, optional
        The true labels. Without it only the phase fractions and Euler numbers of ``pred`` are reported.
    connectivity : 1 or 3
        Neighbourhood of a phase for the Euler number: 3 (the default) is the 26-neighbourhood in 3D (8 in 2D),
        1 the 6-neighbourhood (4 in 2D), as ``skimage.measure.euler_number`` with connectivity 3 / 1 (2 / 1 in 2D).
    phases : {label: name}, optional
        Phase names. Every label named here is reported, even if absent from both volumes. ``None``: the names in
        the ``phases`` attribute of ``pred``, else of ``truth``, when they are Zarr arrays. Unnamed phases are
        called ``"phase<N>"``.
    strict_phases : bool
        Refuse (:class:`InputError`) a volume holding a label, among its scored voxels, that ``phases`` does not
        name (the CLI's ``--phases``: a label nobody named is usually a wrong volume or a wrong label map).
    ignore : sequence of int
        Labels left out of ``mean_iou`` (and of the per-slice ``mean_iou``); they are still reported.
    mask : array of the shape of ``pred`` (any number dtype), optional
        Voxels where it is 0 count for nothing: not in the confusion matrix, the fractions, ``voxels``, nor the
        Euler numbers, for which they are background of every phase (so a phase cut by the mask's boundary is
        counted as it looks inside the mask, like a volume whose outside is background).
    per_slice : "z", "y", "x" (or 0, 1, 2), optional
        Also score every slice across this axis of a 3D volume: per-slice IoU, fractions and 2D Euler numbers
        (``connectivity`` 1 gives the 4-neighbourhood in the plane, 3 the 8-neighbourhood, matching
        ``skimage.measure.euler_number`` on the slice with connectivity 1 / 2), summarised per phase.
    crop : tuple of slices, one per axis, optional
        Score only this region (see :func:`rockseg.io.stores.parse_crop`). It is scored as a volume of its own: its
        faces are padded with background for the Euler number.
    num_workers : int, optional
        Threads reading and counting blocks; default: one per CPU core. Not used with ``scheduler``.
    pred_name, truth_name, mask_name : str
        How to call the volumes in error messages (the CLI passes their paths).
    block_shape : sequence of int, optional
        Shape of the blocks, in voxels. Default: whole chunks of ``pred`` (and of ``truth`` and ``mask`` when their
        chunks fit together in a few M voxels; 64-voxel cubes for NumPy arrays),
        grown along their shortest axis to about 4 M voxels, never straddling a shard of a sharded store. Blocks
        are aligned with multiples of this shape.
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://HOST:8786``) to run the blocks on; default: threads of
        this process. The document is the same, number for number.

    Returns
    -------
    dict
        The document ``rockseg score --json`` prints, plain Python ints, floats and ``None``:
        ``phases``: a list, sorted by label, of ``{"label", "name", "iou", "dice", "precision", "recall",
        "fraction_pred", "fraction_true", "euler_pred", "euler_true"}``; then ``mean_iou``, ``accuracy``,
        ``confusion`` (rows = truth, columns = prediction, phases in the order of ``phases``), ``connectivity``
        and ``voxels`` (voxels scored). Without ``truth``, each phase has only ``label``, ``name``,
        ``fraction_pred`` and ``euler_pred``, and the document only ``phases``, ``connectivity`` and ``voxels``.
        A ratio whose denominator is zero is ``None``: IoU and Dice of a phase absent from both volumes, precision
        of a phase never predicted, recall of a phase absent from the truth. ``mean_iou`` averages the IoUs that
        are not ``None``, of the labels not in ``ignore``.

        Keys added only when their option is used: ``ignore`` (sorted labels), ``voxels_outside_mask`` (voxels of
        the scored region left out by ``mask``), and ``per_slice``: ``{"axis": "z", "neighbourhood": 4 or 8,
        "index": [slice indices in the volume], "voxels": [scored voxels per slice], "mean_iou": [per slice],
        "phases": [...]}``, each phase ``{"label", "name", "iou_mean", "iou_min", "iou_max", "euler_pred_mean",
        "euler_pred_min", "euler_pred_max", "euler_true_mean", "euler_true_min", "euler_true_max", "iou",
        "fraction_pred", "fraction_true", "euler_pred", "euler_true"}`` where the last five are lists with one
        value per slice (``None`` where undefined); the IoU summaries are over the slices where the IoU is
        defined, the Euler summaries over the slices with a scored voxel. Without ``truth`` the keys about truth
        and agreement are absent.

    Raises
    ------
    InputError
        Before any block is read: volumes (or a mask) of different shapes, not 2D or 3D, empty, of a non-integer
        dtype, a bad connectivity, crop, phase label, ignored label, per-slice axis or block shape, or a
        ``scheduler`` that cannot be reached within ``rockseg.cluster.CONNECT_TIMEOUT`` seconds. While
        reading: a label below 0 or above 255, or one that ``phases`` does not name with ``strict_phases``.
        After: a mask that leaves out every voxel.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((4, 4, 4), np.uint8); truth[1:3, 1:3, 1:3] = 1
    >>> pred = truth.copy(); pred[1, 1, 1] = 0
    >>> doc = score_volumes(pred, truth, phases={0: "pore", 1: "grain"})
    >>> # the pore phase wraps the grain cube: one object with one cavity, Euler number 2
    >>> [(p["name"], round(p["iou"], 3), p["euler_pred"]) for p in doc["phases"]]
    [('pore', 0.982, 2), ('grain', 0.875, 1)]
    >>> doc["confusion"]
    [[56, 0], [1, 7]]
    >>> doc = score_volumes(pred, truth, per_slice="z")
    >>> doc["per_slice"]["phases"][1]["euler_pred"]  # the grain cube seen slice by slice
    [0, 1, 1, 0]
    """
    checked = _check(
        pred, truth, connectivity=connectivity, phases=phases, ignore=ignore, mask=mask, per_slice=per_slice,
        crop=crop, num_workers=num_workers, pred_name=pred_name, truth_name=truth_name, mask_name=mask_name,
        block_shape=block_shape,
    )
    work = _work(pred, truth, checked, mask=mask, strict_phases=strict_phases, pred_name=pred_name,
                 truth_name=truth_name)
    total = _sum_units(work, checked, scheduler, num_workers)
    if not total.counts_pred.any():
        raise InputError(
            f"{mask_name} leaves out every voxel of the scored region: nothing to score; check the mask "
            f"(0 = left out, nonzero = scored) and --crop"
        )
    return _finish(total, checked, with_truth=truth is not None, ignore=ignore, masked=mask is not None)


@dataclass(frozen=True)
class _Checked:
    """The checked options of a score: what the block plan and the document are built from."""

    shape: tuple[int, ...]  # of the volumes
    connectivity: int
    axis: int | None  # per-slice axis
    origin: tuple[int, ...]  # start of the scored region (the crop), in array coordinates
    size: tuple[int, ...]  # shape of the scored region
    names: dict[int, str]  # phase names
    ignored: frozenset[int]  # labels left out of the mean IoU
    block_shape: tuple[int, ...]
    unit_shape: tuple[int, ...]  # of the work of one task: a shard of the store, or a block
    pred_checked: bool  # whether the dtype of pred already guarantees labels 0..255
    truth_checked: bool


def _check(
    pred: Any,
    truth: Any,
    *,
    connectivity: int,
    phases: Mapping[int, str] | None,
    ignore: Sequence[int],
    mask: Any,
    per_slice: str | int | None,
    crop: tuple[slice, ...] | None,
    num_workers: int | None,
    pred_name: str,
    truth_name: str,
    mask_name: str,
    block_shape: Sequence[int] | None,
) -> _Checked:
    """Check every option of :func:`score_volumes` before any block is read.

    The order of the checks decides which error a call with several bad options gets: keep it when adding one.
    """
    shape = _check_shapes(pred, truth, mask, pred_name, truth_name, mask_name)
    d = len(shape)
    connectivity = check_connectivity(connectivity, spatial_dims=d)
    axis = _check_axis(per_slice, shape, pred_name)
    pred_checked = _check_labels_dtype(pred, pred_name)
    truth_checked = _check_labels_dtype(truth, truth_name) if truth is not None else True
    region = check_crop(crop, shape, name=pred_name)
    if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) < 1):
        raise InputError(f"num_workers {num_workers!r} must be a positive number of threads")
    if phases is None:
        phases = phases_of(pred) or (phases_of(truth) if truth is not None else {})
    names = {
        _check_label(label, f"phase label {label!r} ({name!r})", "fix the phase names"): str(name)
        for label, name in phases.items()
    }
    ignored = frozenset(
        _check_label(label, f"ignored label {label!r}", "give a label of the volumes") for label in ignore
    )
    base, shard = block_base([pred, truth, mask], d)
    if block_shape is None:
        block_shape = grow_block(base or (_NUMPY_BASE_BLOCK,) * d, shape, shard)
    else:
        block_shape = tuple(block_shape)
        if len(block_shape) != d or not all(isinstance(b, (int, np.integer)) and b > 0 for b in block_shape):
            raise InputError(f"block shape {block_shape!r} must give one positive size per axis of {shape}")
    return _Checked(
        shape=shape,
        connectivity=connectivity,
        axis=axis,
        origin=tuple(r.start for r in region),
        size=tuple(r.stop - r.start for r in region),
        names=names,
        ignored=ignored,
        block_shape=block_shape,
        unit_shape=unit_shape(block_shape, shard, tuple(r.stop - r.start for r in region)),
        pred_checked=pred_checked,
        truth_checked=truth_checked,
    )


def _check_shapes(
    pred: Any, truth: Any, mask: Any, pred_name: str, truth_name: str, mask_name: str
) -> tuple[int, ...]:
    """The shape of the volumes, after checking that they are arrays of one 2D or 3D, non-empty shape."""
    for array, name in ((pred, pred_name), (truth, truth_name)):
        if array is not None and not (hasattr(array, "shape") and hasattr(array, "dtype")):
            raise InputError(f"{name} is a {type(array).__name__}, not an array: give a Zarr or NumPy array")
    shape = tuple(int(n) for n in pred.shape)
    if len(shape) not in (2, 3):
        raise InputError(
            f"{pred_name} has shape {shape}: score needs a 3D (Z, Y, X) or 2D (Y, X) label volume"
        )
    if truth is not None and tuple(truth.shape) != shape:
        raise InputError(
            f"{truth_name} has shape {tuple(int(n) for n in truth.shape)} but {pred_name} has {shape}: "
            f"score needs volumes of the same shape"
        )
    if 0 in shape:
        raise InputError(f"{pred_name} has shape {shape}: there is nothing to score")
    if mask is not None:
        _check_mask(mask, shape, mask_name, pred_name)
    return shape


def _check_labels_dtype(array: Any, name: str) -> bool:
    """Check the dtype of a label volume; return whether it already guarantees labels 0..255."""
    dtype = np.dtype(array.dtype)
    if dtype == np.bool_ or dtype == np.uint8:
        return True
    if dtype.kind not in "ui":
        raise InputError(
            f"{name} has dtype {dtype} but labels must be integers: give a label volume (phases 0..{MAX_LABEL}, "
            f"uint8), e.g. round and convert it with 'rockseg convert', or score the output of 'rockseg predict'"
        )
    return False


def _check_mask(mask: Any, shape: tuple[int, ...], mask_name: str, pred_name: str) -> None:
    if not (hasattr(mask, "shape") and hasattr(mask, "dtype")):
        raise InputError(f"{mask_name} is a {type(mask).__name__}, not an array: give a Zarr or NumPy array")
    mask_shape = tuple(int(n) for n in mask.shape)
    if mask_shape != shape:
        raise InputError(
            f"{mask_name} has shape {mask_shape} but {pred_name} has {shape}: the mask must have the shape of the "
            f"volume it masks (nonzero = scored, 0 = left out)"
        )
    if np.dtype(mask.dtype).kind not in "biuf":
        raise InputError(
            f"{mask_name} has dtype {np.dtype(mask.dtype)}: a mask holds numbers, nonzero where voxels are scored"
        )


def _check_axis(per_slice: str | int | None, shape: tuple[int, ...], pred_name: str) -> int | None:
    if per_slice is None:
        return None
    if len(shape) != 3:
        raise InputError(
            f"per-slice scores need a 3D (Z, Y, X) volume but {pred_name} has shape {shape}: drop --per-slice"
        )
    if isinstance(per_slice, str) and per_slice.lower() in AXES:
        return AXES.index(per_slice.lower())
    if isinstance(per_slice, (int, np.integer)) and not isinstance(per_slice, bool) and 0 <= per_slice < 3:
        return int(per_slice)
    raise InputError(f"per-slice axis {per_slice!r} is not one of {', '.join(AXES)}: choose the axis slices cut")


def _check_label(label: Any, what: str, fix: str) -> int:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label <= MAX_LABEL:
        raise InputError(f"{what} is not an integer 0-{MAX_LABEL}: {fix}")
    return int(label)


def _work(pred: Any, truth: Any, checked: _Checked, *, mask: Any, strict_phases: bool, pred_name: str,
          truth_name: str) -> Work:
    """What every unit task needs: the volumes, the Euler tables, the per-slice axis, the mask, the block shape."""
    d = len(checked.shape)
    plan = Plan(
        shape=checked.size,
        lut=compact_lut(d, checked.connectivity),
        slice_lut=None if checked.axis is None else compact_lut(2, checked.connectivity),
        axis=checked.axis,
        allowed=frozenset(checked.names) if strict_phases else None,
        mask=None if mask is None else Mask(mask, checked.origin),
    )
    pred_vol = Volume(pred, pred_name, checked.origin, checked.pred_checked)
    truth_vol = None if truth is None else Volume(truth, truth_name, checked.origin, checked.truth_checked)
    return Work(pred_vol, truth_vol, plan, checked.origin, checked.block_shape)


def _sum_units(work: Work, checked: _Checked, scheduler: str | None, num_workers: int | None) -> Tally:
    """Run the units with a bounded number in flight and sum their tallies and the seams between them."""
    edges = [axis_edges(0, n, o, u) for n, o, u in zip(checked.size, checked.origin, checked.unit_shape)]
    plan = work.plan
    seams = SeamCounter(edges, checked.size, plan.lut, plan.axis, plan.slice_lut, work.truth is not None)

    def units() -> Iterator[tuple[tuple[int, ...], tuple[Any, ...]]]:
        for index in block_order([len(e) for e in edges]):
            lo = tuple(edges[a][i][0] for a, i in enumerate(index))
            hi = tuple(edges[a][i][1] for a, i in enumerate(index))
            yield index, (lo, hi)

    tallies: list[Tally] = []
    for index, (tally, faces) in run_bounded(score_unit, work, units(), scheduler=scheduler,
                                             workers=num_workers):
        seams.add(index, faces)
        tallies.append(tally)
        if len(tallies) >= MERGE_EVERY:
            tallies = [merge(*tallies)]
    return merge(*tallies, seams.tally())


def _finish(
    total: Tally, checked: _Checked, *, with_truth: bool, ignore: Sequence[int], masked: bool
) -> dict[str, Any]:
    """The score document of the summed tally, with the keys of the options used."""
    d = len(checked.shape)
    doc = score_document(
        total, checked.names, checked.connectivity, d, with_truth=with_truth, ignored=checked.ignored
    )
    if ignore:
        doc["ignore"] = sorted(checked.ignored)
    if masked:
        doc["voxels_outside_mask"] = math.prod(checked.size) - doc["voxels"]
    if checked.axis is not None:
        doc["per_slice"] = per_slice_document(
            total.slices,
            doc,
            checked.names,
            checked.connectivity,
            axis=checked.axis,
            first=checked.origin[checked.axis],
            ignored=checked.ignored,
        )
    return doc
