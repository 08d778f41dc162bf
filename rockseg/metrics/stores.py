"""Scoring label stores named by path: what ``rockseg score`` runs (open, check, score, and the report).

Every option is checked before any voxel is read (a bad ``--report-slice`` or an existing report folder is found
now, not after an hour of scoring); :func:`rockseg.metrics.score.score_volumes` then does the work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.io.stores import ATTR_PROVENANCE, open_volume, parse_crop, parse_phases, phases_of
from rockseg.metrics.report import check_report_dir, parse_report_slice, write_report
from rockseg.metrics.score import score_volumes


def score_stores(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str] | None = None,
    *,
    connectivity: int = 3,
    crop: str | None = None,
    phases: str | None = None,
    ignore: Sequence[int] = (),
    mask: str | os.PathLike[str] | None = None,
    per_slice: str | None = None,
    report: str | os.PathLike[str] | None = None,
    report_slice: str | None = None,
    num_workers: int | None = None,
    overwrite: bool = False,
    scheduler: str | None = None,
    unlabelled: int | None = None,
) -> dict[str, Any]:
    """The score document of the label store ``pred`` (against ``truth`` when given), as ``score --json`` prints.

    ``phases`` ("0=pore,1=grain") names the phases and makes any other label an error; without it the names come
    from the stores' attributes. ``crop`` ("Z0:Z1,Y0:Y1,X0:X1") scores a region. With ``report``, pictures and an
    ``index.html`` are written into that new folder (``overwrite`` replaces an existing one). ``scheduler`` (the
    address of a Dask distributed scheduler) runs the blocks on that cluster instead of this process's threads.
    """
    # The workers of a cluster open the stores again, maybe in another folder: give them absolute paths.
    where = (lambda path: Path(path).absolute()) if scheduler else Path
    p = open_volume(where(pred), name="prediction")
    t = open_volume(where(truth), name="truth") if truth is not None else None
    m = open_volume(where(mask), name="mask") if mask is not None else None
    outside = (dict(p.attrs).get(ATTR_PROVENANCE) or {}).get("outside_mask")
    if outside is not None and m is None:  # a masked prediction: its outside label is no phase, --mask or not
        m, mask = _Labelled(p, outside), f"{pred} (voxels labelled {outside} are outside its mask)"
    if unlabelled is not None and t is not None:  # sparse truth: its unlabelled voxels are left out, as a mask does
        m, mask = _Labelled(t, unlabelled, m), f"{mask or truth} (truth voxels {unlabelled} are unlabelled)"
    named = parse_phases(phases)
    names = named or phases_of(p) or (phases_of(t) if t is not None else {})
    region = parse_crop(crop, p.shape, volume=pred) if crop else None
    if report is not None:
        view = parse_report_slice(report_slice, p.shape, region)
        check_report_dir(Path(report), overwrite=overwrite)
    result = score_volumes(
        p, t, connectivity=connectivity, phases=names, strict_phases=bool(named), ignore=ignore, mask=m,
        per_slice=per_slice, crop=region, num_workers=num_workers, pred_name=str(pred), truth_name=str(truth),
        mask_name=str(mask), scheduler=scheduler,
    )
    if report is not None:
        write_report(Path(report), doc=result, pred=p, truth=t, mask=m, crop=region, view=view, pred_name=str(pred),
                     truth_name=str(truth), mask_name=str(mask), overwrite=overwrite)
    return result


class _Labelled:
    """A mask computed block by block: nonzero where the truth is labelled (not ``unlabelled``) and ``mask``, if
    given, is nonzero (``score --unlabelled``: sparse labels; also a masked prediction's outside label)."""

    def __init__(self, truth: Any, unlabelled: int, mask: Any = None) -> None:
        self.truth, self.unlabelled, self.mask = truth, int(unlabelled), mask
        self.shape, self.dtype, self.ndim = tuple(truth.shape), np.dtype(bool), len(truth.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        keep = np.asarray(self.truth[index]) != self.unlabelled
        return keep if self.mask is None else keep & (np.asarray(self.mask[index]) != 0)
