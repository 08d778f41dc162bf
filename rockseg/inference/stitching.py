"""Make the final label volume from one or more block-wise predictions; no torch.

``stitch`` first checks that every shard (every block, for an old prediction) of every prediction is done (a run
split into parts may still be missing some) and refuses with the list of missing ones otherwise. One complete
prediction is copied file by file (its shard files and its metadata, with the final attributes: nothing is
decoded or re-encoded; an old per-block prediction is re-encoded into shards); several
predictions of the same volume (2D models run along different axes, several models, ...) are fused: by
averaging their class probabilities when every one of them has a probability store, else by a majority vote of
the labels (ties go to the prediction given first). Fusion can make new specks, so fused labels have their specks
removed again, block by block as ``predict`` removes them (:mod:`rockseg.specks`), with the smallest speck size the
predictions were made with. The result is a Zarr label store, or an export to ``.tif``, ``.nc``, ``.raw`` or ``.npy``
chosen by the output's extension.

Fusion runs shard by shard of the output, each shard assembled from its blocks in memory and written once by
one task. Copying and fusion run on threads of this process, or on a Dask distributed cluster (``scheduler``),
with a bounded number of tasks in flight (:mod:`.cluster`).

``stitch`` runs in three steps: check (:func:`_check`), plan (:func:`_plan`: the fusion method and the output's
attributes) and write (:func:`_write`), then the optional preview pyramid (:func:`write_preview`).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rockseg.cluster import connect, map_batches
from rockseg.errors import IncompleteError, InputError
from rockseg.inference.grid import Triple, block_grid, block_region
from rockseg.inference.verifying import check_verified
from rockseg.inference.store import MARKER_DIR, Prediction, checked_compressors, default_shard, missing_message
from rockseg.io.omezarr import is_ome_zarr, label_array_path, ome_output
from rockseg.io.stores import (
    ATTR_PHASES, ATTR_PROVENANCE, ATTR_SOURCE, ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT, atomic_output,
    check_new_output, open_volume, provenance,
)
from rockseg.progress import Reporter
from rockseg.specks import remove_specks

EXPORTS = (".tif", ".tiff", ".nc", ".h5", ".hdf5", ".raw", ".npy")


def stitch(
    preds: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, overwrite: bool = False,
    preview: str | os.PathLike[str] | None = None, workers: int = 2, scheduler: str | None = None,
    verify: bool = False, progress: bool = False, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Check, fuse and write the final labels of one or more predictions.

    Parameters
    ----------
    preds : paths of prediction stores written by ``rockseg predict`` (all of the same volume).
    out : ``.zarr`` label store, or an export (``.tif``, ``.nc``, ``.raw`` + ``.mhd``, ``.npy``).
    overwrite : replace an existing output.
    preview : optional path of a Zarr group to write a downsampled preview pyramid into (see
        :func:`write_preview`).
    workers : threads of this process that copy or fuse shards (without ``scheduler``).
    scheduler : address of a Dask distributed scheduler: the shards are copied or fused by its workers (which
        must see the same files), a bounded number of tasks at a time.
    verify : first re-read every unit of every prediction and check it against its completion record
        (:func:`~rockseg.inference.verifying.verify`).

    Raises
    ------
    IncompleteError
        (exit code 1) listing the missing blocks when a prediction is not complete (and, with ``verify``, the
        units whose data does not match their records).
    """
    out = Path(out)
    opened = _check(preds, out, overwrite=overwrite, preview=preview)
    if verify:
        check_verified([p.path for p in opened], workers=workers)
    plan = _plan(opened)
    start = time.perf_counter()
    client = connect(scheduler) if scheduler else None
    try:
        _write(plan, out, overwrite=overwrite, run=_Runner(workers, client, progress, log))
    finally:
        if client is not None:
            client.close()
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
            lines.append(f"{p.path}: {missing_message(p, missing, limit=50)}")
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
    made_from = first.settings.get("input", {}).get("fingerprint")
    for p in opened[1:]:
        other = p.settings.get("input", {}).get("fingerprint")
        if made_from and other and other != made_from:
            raise InputError(
                f"{p.path} was made from another input than {first.path} (input fingerprint {other[:12]}, not "
                f"{made_from[:12]}): stitch fuses predictions of the same volume"
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
    probabilities: list[str]  # the probability stores, for "mean-probability"
    attrs: dict[str, Any]
    outside: int | None = None  # the label outside a mask, when a prediction was masked
    specks: int = 0  # the speck size removed again after fusion (rockseg.specks)
    classes: int = 0  # the number of phases


def _fuse(method: str, labels: Sequence[zarr.Array], probabilities: Sequence[zarr.Array],
          region: tuple[slice, ...], outside: int | None = None) -> np.ndarray:
    """The final labels of one region; ``outside`` (the label of voxels outside a mask) stays where every
    prediction has it (their probabilities there are all zero, which must not read as phase 0)."""
    if method == "copy":
        return np.asarray(labels[0][region])
    if probabilities:
        total = sum(np.asarray(a[(slice(None), *region)], dtype=np.uint32) for a in probabilities)
        fused = np.asarray(total.argmax(axis=0), dtype=np.uint8)
        if outside is not None:
            out = np.logical_and.reduce([np.asarray(a[region]) == outside for a in labels])
            fused[out] = outside
        return fused
    # majority vote; the first prediction gets half a vote more so that ties go to it
    values = [np.asarray(a[region]) for a in labels]
    present = np.unique(np.concatenate([np.unique(lab) for lab in values]))
    score = np.stack([
        2 * sum((lab == c).astype(np.uint16) for lab in values) + (values[0] == c) for c in present
    ])
    return present[score.argmax(axis=0)].astype(np.uint8)


def _plan(opened: list[Prediction]) -> _Plan:
    """Fuse by mean probability when every prediction has its probabilities, else by majority vote."""
    first = opened[0]
    probs = [p.probabilities for p in opened]
    use_probs = len(opened) > 1 and all(probs)
    for q in probs if use_probs else ():
        open_volume(q, name="probabilities")  # exists and is an array: checked before any work
    method = "copy" if len(opened) == 1 else ("mean-probability" if use_probs else "majority-vote")
    src_attrs = dict(first.array.attrs)
    attrs: dict[str, Any] = {
        key: src_attrs[key] for key in (ATTR_PHASES, ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT, ATTR_SOURCE) if key in src_attrs
    }
    outside = [dict(p.array.attrs)[ATTR_PROVENANCE].get("outside_mask") for p in opened]
    masked = next((o for o in outside if o is not None), None)
    # fusion may make new specks: remove them again with the smallest size any prediction removed (0: none)
    specks = 0 if method == "copy" else min(int(p.settings.get("specks") or 0) for p in opened)
    attrs[ATTR_PROVENANCE] = provenance(
        stitched_from=[str(p.path.resolve()) for p in opened], method=method, outside_mask=masked,
        inputs=[p.settings.get("input") for p in opened],  # what each prediction was made from
        specks=specks,
    )
    return _Plan(opened, method, [str(q) for q in probs] if use_probs else [], attrs, masked, specks,
                 len(attrs.get(ATTR_PHASES) or {}))


# ------------------------------------------------------------------------------------------------------ write
@dataclass(frozen=True)
class _Runner:
    """Where the shards of the output are copied or fused: threads of this process, or a Dask cluster."""

    workers: int
    client: Any
    progress: bool
    log: Callable[[str], None] | None

    def map(self, fn: Callable[[Any], int], items: Sequence[Any], *, label: str, batch: int) -> None:
        with Reporter(len(items), label, bar=self.progress, log=self.log) as report:
            def done(results: list[int]) -> None:
                for n in results:
                    report.advance(n)

            map_batches(fn, items, batch=batch, workers=self.workers, client=self.client, done=done)


def _write(plan: _Plan, out: Path, *, overwrite: bool, run: _Runner) -> None:
    """Write the fused labels to ``out``: a Zarr store, or an export through a temporary one."""
    export = _is_export(out)
    if not export and out.suffix.lower() != ".zarr":
        raise InputError(f"output {out} has an unknown extension: use .zarr, or export to {', '.join(EXPORTS)}")
    if export and plan.method == "copy":
        from rockseg.io import export as export_array

        export_array(plan.preds[0].array, out, overwrite=overwrite, progress=run.progress)
        return
    target = out if not export else out.with_name(f".{out.name}.fused.zarr")
    plain = not (is_ome_zarr(target) or is_ome_zarr(plan.preds[0].path))  # shard files copy only array to array
    if plan.method == "copy" and not plan.preds[0].legacy and plain:
        _copy_shards(plan, target, overwrite=overwrite, run=run)
    else:
        _write_zarr(plan, target, overwrite=overwrite or export, run=run)
    if export:
        from rockseg.io import export as export_array

        try:
            export_array(zarr.open_array(store=str(target), mode="r"), out, overwrite=overwrite, progress=run.progress)
        finally:
            shutil.rmtree(target, ignore_errors=True)


def _copy_file(src: str, dst: str, name: str) -> int:
    """Copy one shard file (a kernel copy where the file system offers one); its size in bytes."""
    (Path(dst) / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(src) / name, Path(dst) / name)
    return (Path(dst) / name).stat().st_size


def _copy_shards(plan: _Plan, target: Path, *, overwrite: bool, run: _Runner) -> None:
    """One complete prediction: copy its metadata and shard files as they are (nothing decoded or re-encoded),
    then give the copy the final attributes."""
    pred = plan.preds[0]
    files = []
    for folder, dirs, names in os.walk(pred.path):
        if Path(folder) == pred.path:
            dirs[:] = [d for d in dirs if d != MARKER_DIR]
            names = [n for n in names if n not in ("zarr.json", ".zattrs", ".zarray", ".zgroup")]
        files.extend(os.path.relpath(os.path.join(folder, n), pred.path) for n in names)
    files.sort()
    with atomic_output(target, overwrite=overwrite) as tmp:
        tmp.mkdir()
        shutil.copyfile(pred.path / "zarr.json", tmp / "zarr.json")
        zarr.open_array(store=str(tmp), mode="r+").attrs.put(plan.attrs)
        run.map(functools.partial(_copy_file, str(pred.path), str(tmp)), files, label="stitch (copy)", batch=64)


@dataclass(frozen=True)
class _FuseJob:
    """Fuse and write whole shards of the output (picklable, for Dask workers); one shard per call."""

    labels: tuple[str, ...]
    probabilities: tuple[str, ...]
    method: str
    out: str
    block: Triple
    shard: Triple
    shape3: Triple
    outside: int | None = None
    specks: int = 0
    classes: int = 0

    def __call__(self, unit: Triple) -> int:
        labels = [zarr.open_array(store=p, mode="r") for p in self.labels]
        probs = [zarr.open_array(store=p, mode="r") for p in self.probabilities]
        out = zarr.open_array(store=self.out, mode="r+")
        flat = out.ndim == 2
        edge = [b * k for b, k in zip(self.block, self.shard)]
        region = block_region(unit, self.shape3, edge)
        buf = np.empty([r.stop - r.start for r in region], np.uint8)
        counts = [-(-(r.stop - r.start) // b) for r, b in zip(region, self.block)]
        for index in block_grid(counts, (1, 1, 1)):
            local = block_region(index, buf.shape, self.block)
            where = tuple(slice(r.start + w.start, r.start + w.stop) for r, w in zip(region, local))
            fused = _fuse(self.method, labels, probs, where[1:] if flat else where, self.outside)
            buf[local] = fused.reshape(buf[local].shape)
            if self.specks and self.classes:  # as predict does: pieces reaching a neighbouring block are kept
                faces = [(w.start > 0, w.stop < n) for w, n in zip(where, self.shape3)]
                remove_specks(buf[local], self.specks, classes=self.classes, open_faces=faces)
        out[region[1:] if flat else region] = buf[0] if flat else buf  # the whole shard in one write
        return int(buf.size)


def _write_zarr(plan: _Plan, target: Path, *, overwrite: bool, run: _Runner) -> None:
    """Fuse the labels shard by shard into a new sharded Zarr store (each shard written once, by one task)."""
    first = plan.preds[0]
    shard = first.shard if not first.legacy else default_shard(first.shape3, first.block)
    shards = tuple(b * k for b, k in zip(first.block, shard))[-first.array.ndim:]
    with ome_output(target, overwrite=overwrite, workers=run.workers) as tmp:
        zarr.create_array(
            store=str(tmp), shape=first.array.shape, chunks=first.array.chunks, shards=shards, dtype="uint8",
            fill_value=0, compressors=checked_compressors(), attributes=plan.attrs,
        )
        job = _FuseJob(
            labels=tuple(str(label_array_path(p.path)) for p in plan.preds), probabilities=tuple(plan.probabilities),
            method=plan.method, out=str(tmp), block=first.block, shard=shard, shape3=first.shape3,
            outside=plan.outside, specks=plan.specks, classes=plan.classes,
        )
        counts = [-(-n // b) for n, b in zip(first.block_counts(), shard)]
        run.map(job, block_grid(counts, (1, 1, 1)), label="stitch", batch=1)


def write_preview(
    labels: zarr.Array, path: str | os.PathLike[str], *, smallest: int = 64, overwrite: bool = False,
    workers: int = 2,
) -> int:
    """Write a label volume as an OME-Zarr image (NGFF 0.5) for viewers: level 0 at full resolution, then a
    pyramid down to ``smallest`` voxels (see :func:`rockseg.io.omezarr.write_preview`). Returns the number of
    levels, level 0 included."""
    from rockseg.io.omezarr import write_preview as write_ome

    return write_ome(labels, path, smallest=smallest, overwrite=overwrite, workers=workers)
