"""Make the final label volume from one or more block-wise predictions; no torch.

``stitch`` first checks that every block of every prediction is done (a run split into parts may still be
missing some) and refuses with the list of missing blocks otherwise. One prediction is copied as it is; several
predictions of the same volume (2D models run along different axes, several models, ...) are fused: by
averaging their class probabilities when every one of them has a probability store, else by a majority vote of
the labels (ties go to the prediction given first). The result is a Zarr label store, or an export to ``.tif``,
``.nc``, ``.raw`` or ``.npy`` chosen by the output's extension.

``stitch`` runs in three steps: check (:func:`_check`), plan (:func:`_plan`: the fusion method and the output's
attributes) and write (:func:`_write`), then the optional preview pyramid (:func:`write_preview`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr

from rockseg.errors import IncompleteError, InputError
from rockseg.inference.grid import block_grid, block_region
from rockseg.inference.store import Prediction
from rockseg.io.omezarr import ome_output
from rockseg.io.stores import (
    ATTR_PHASES, ATTR_PROVENANCE, ATTR_SOURCE, ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT, check_new_output,
    compressors_for, open_volume, provenance,
)
from rockseg.progress import Reporter

EXPORTS = (".tif", ".tiff", ".nc", ".h5", ".hdf5", ".raw", ".npy")


def stitch(
    preds: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, overwrite: bool = False,
    preview: str | os.PathLike[str] | None = None, workers: int = 2, progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Check, fuse and write the final labels of one or more predictions.

    Parameters
    ----------
    preds : paths of prediction stores written by ``rockseg predict`` (all of the same volume).
    out : ``.zarr`` label store, or an export (``.tif``, ``.nc``, ``.raw`` + ``.mhd``, ``.npy``).
    overwrite : replace an existing output.
    preview : optional path of a Zarr group to write a downsampled preview pyramid into (see
        :func:`write_preview`).

    Raises
    ------
    IncompleteError
        (exit code 1) listing the missing blocks when a prediction is not complete.
    """
    out = Path(out)
    opened = _check(preds, out, overwrite=overwrite, preview=preview)
    plan = _plan(opened)
    start = time.perf_counter()
    _write(plan, out, overwrite=overwrite, workers=workers, progress=progress, log=log)
    levels = 0
    if preview is not None:
        source = plan.preds[0].array if _is_export(out) else open_volume(out)
        levels = write_preview(source, preview, overwrite=overwrite, workers=workers)
    seconds = time.perf_counter() - start
    return {
        "out": str(out), "method": plan.method, "preview_levels": levels,
        "predictions": [str(p.path) for p in opened], "shape": list(plan.preds[0].array.shape), "seconds": seconds,
    }


def _is_export(out: Path) -> bool:
    return out.suffix.lower() in EXPORTS


# ------------------------------------------------------------------------------------------------------ check
def _check(preds: Sequence[str | os.PathLike[str]], out: Path, *, overwrite: bool,
           preview: str | os.PathLike[str] | None) -> list[Prediction]:
    """Open the predictions and check that they are complete and alike and that the outputs can be written."""
    if not preds:
        raise InputError("stitch needs at least one prediction store")
    check_new_output(out, overwrite=overwrite)
    if preview is not None:
        check_new_output(preview, overwrite=overwrite)
    opened = [Prediction(p) for p in preds]
    incomplete = [(p, p.missing()) for p in opened]
    incomplete = [(p, m) for p, m in incomplete if m]
    if incomplete:
        lines = []
        for p, missing in incomplete:
            shown = " ".join(".".join(map(str, b)) for b in missing[:50])
            more = f" (+{len(missing) - 50} more)" if len(missing) > 50 else ""
            lines.append(f"{p.path}: {len(missing)} of {len(p.blocks())} blocks missing: {shown}{more}")
        raise IncompleteError(
            "; ".join(lines) + ": run the same 'rockseg predict' command (or the missing parts) again, then stitch"
        )
    first = opened[0]
    for p in opened[1:]:
        if p.array.shape != first.array.shape:
            raise InputError(
                f"{p.path} has shape {p.array.shape} but {first.path} has {first.array.shape}: "
                f"stitch fuses predictions of the same volume"
            )
    phases = dict(first.array.attrs).get(ATTR_PHASES) or {}
    for p in opened[1:]:
        if (dict(p.array.attrs).get(ATTR_PHASES) or {}) != phases:
            raise InputError(f"{p.path} has other phases than {first.path}: fuse predictions of the same phases")
    return opened


# ------------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class _Plan:
    """How the predictions are fused and what the output's attributes are."""

    preds: list[Prediction]
    method: str  # "copy", "mean-probability" or "majority-vote"
    probabilities: list[zarr.Array]  # the probability stores, for "mean-probability"
    attrs: dict[str, Any]

    def fuse(self, region: tuple[slice, ...]) -> np.ndarray:
        """The final labels of one region."""
        if self.method == "copy":
            return np.asarray(self.preds[0].array[region])
        if self.probabilities:
            total = sum(np.asarray(a[(slice(None), *region)], dtype=np.uint32) for a in self.probabilities)
            return np.asarray(total.argmax(axis=0), dtype=np.uint8)
        # majority vote; the first prediction gets half a vote more so that ties go to it
        labels = [np.asarray(p.array[region]) for p in self.preds]
        present = np.unique(np.concatenate([np.unique(lab) for lab in labels]))
        score = np.stack([
            2 * sum((lab == c).astype(np.uint16) for lab in labels) + (labels[0] == c) for c in present
        ])
        return present[score.argmax(axis=0)].astype(np.uint8)


def _plan(opened: list[Prediction]) -> _Plan:
    """Fuse by mean probability when every prediction has its probabilities, else by majority vote."""
    first = opened[0]
    probs = [p.probabilities for p in opened]
    use_probs = len(opened) > 1 and all(probs)
    prob_arrays = [open_volume(q, name="probabilities") for q in probs] if use_probs else []
    method = "copy" if len(opened) == 1 else ("mean-probability" if use_probs else "majority-vote")
    src_attrs = dict(first.array.attrs)
    attrs: dict[str, Any] = {
        key: src_attrs[key] for key in (ATTR_PHASES, ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT, ATTR_SOURCE) if key in src_attrs
    }
    attrs[ATTR_PROVENANCE] = provenance(stitched_from=[str(p.path.resolve()) for p in opened], method=method)
    return _Plan(opened, method, prob_arrays, attrs)


# ------------------------------------------------------------------------------------------------------ write
def _write(plan: _Plan, out: Path, *, overwrite: bool, workers: int, progress: bool,
           log: Callable[[str], None] | None) -> None:
    """Write the fused labels to ``out``: a Zarr store, or an export through a temporary one."""
    export = _is_export(out)
    if not export and out.suffix.lower() != ".zarr":
        raise InputError(f"output {out} has an unknown extension: use .zarr, or export to {', '.join(EXPORTS)}")
    if export and plan.method == "copy":
        from rockseg.io import export as export_array

        export_array(plan.preds[0].array, out, overwrite=overwrite, progress=progress)
        return
    target = out if not export else out.with_name(f".{out.name}.fused.zarr")
    _write_zarr(plan, target, overwrite=overwrite or export, workers=workers, progress=progress, log=log)
    if export:
        from rockseg.io import export as export_array

        try:
            export_array(zarr.open_array(store=str(target), mode="r"), out, overwrite=overwrite, progress=progress)
        finally:
            shutil.rmtree(target, ignore_errors=True)


def _write_zarr(plan: _Plan, target: Path, *, overwrite: bool, workers: int, progress: bool,
                log: Callable[[str], None] | None) -> None:
    """Fuse and write the labels chunk by chunk into a new Zarr store, with Dask's threads."""
    first = plan.preds[0].array
    shape, chunks = first.shape, first.chunks
    with ome_output(target, overwrite=overwrite, workers=workers) as tmp:
        arr = zarr.create_array(
            store=str(tmp), shape=shape, chunks=chunks, dtype="uint8", fill_value=0,
            compressors=compressors_for("blosc-zstd"), attributes=plan.attrs,
        )
        grid = block_grid(shape, chunks)
        with Reporter(len(grid), "stitch", bar=progress, log=log) as report:

            def run(index: tuple[int, ...]) -> None:
                region = block_region(index, shape, chunks)
                arr[region] = plan.fuse(region)
                report.advance(int(np.prod([r.stop - r.start for r in region])))

            tasks = [dask.delayed(run, pure=False)(i) for i in grid]
            dask.compute(*tasks, scheduler="threads", num_workers=workers)


def write_preview(
    labels: zarr.Array, path: str | os.PathLike[str], *, smallest: int = 64, overwrite: bool = False,
    workers: int = 2,
) -> int:
    """Write a label volume as an OME-Zarr image (NGFF 0.5) for viewers: level 0 at full resolution, then a
    pyramid down to ``smallest`` voxels (see :func:`rockseg.io.omezarr.write_preview`). Returns the number of
    levels, level 0 included."""
    from rockseg.io.omezarr import write_preview as write_ome

    return write_ome(labels, path, smallest=smallest, overwrite=overwrite, workers=workers)
