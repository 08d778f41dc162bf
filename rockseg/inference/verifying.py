"""``rockseg verify PRED``: re-read every unit of a prediction and check it against its completion records; no
torch.

A unit is *ok* when one of its records verifies: the CRC-32C and size of its shard file(s) (labels, and
probabilities when the prediction has them) equal those the record carries (:mod:`.durable`). Records written
before checksums were recorded (and layout 1's marker files) are checked by decoding the unit, which fails on
a chunk whose own CRC-32C (in the codec chain) does not match, or on broken compressed data. A unit is *missing*
when it has no record, *corrupt* (``missing data``, ``truncated``, ``corrupt``) when its records do not verify.

The ids of records that do not verify are appended to ``PRED/.rockseg/invalid``: ``predict`` then treats those
units as not done, and a re-run of the same command recomputes exactly them (a layout 1 marker is removed
instead). ``stitch --verify`` runs this on every prediction before stitching.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.cluster import map_batches
from rockseg.errors import IncompleteError
from rockseg.inference.durable import check_record
from rockseg.inference.grid import Triple, block_region
from rockseg.inference.store import Prediction
from rockseg.progress import Reporter


def verify(pred_path: str | os.PathLike[str], *, workers: int = 2, progress: bool = False,
           log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Check every unit of a prediction against its records; mark the records that fail (see the module).

    Returns ``{"path", "units", "ok", "missing": [names], "corrupt": {name: reason}, "complete"}``; ``complete``
    is True when every unit is ok.
    """
    pred = Prediction(pred_path)
    records = pred.records() if not pred.legacy else {u: [{}] for u in pred.done()}
    units = pred.units()
    checked = [u for u in units if u in records]
    bad: dict[Triple, tuple[str, list[str]]] = {}

    def check(unit: Triple) -> tuple[Triple, str | None, list[str]]:
        reasons, ids = [], []
        files = pred.unit_files(unit)
        for rec in records[unit]:
            reason = check_record(files, rec) if "crc32c" in rec else _decodes(pred, unit)
            if reason is None:
                return unit, None, []
            reasons.append(reason)
            ids.append(rec.get("id", ""))
        return unit, reasons[0], ids

    with Reporter(len(checked), "verify", bar=progress, log=log) as report:
        def done(results: list[tuple[Triple, str | None, list[str]]]) -> None:
            for unit, reason, ids in results:
                if reason is not None:
                    bad[unit] = (reason, ids)
                report.advance(1)

        map_batches(check, checked, batch=16, workers=workers, done=done)
    _invalidate(pred, bad)
    name = lambda u: ".".join(map(str, u))  # noqa: E731
    missing = [name(u) for u in units if u not in records]
    corrupt = {name(u): bad[u][0] for u in sorted(bad)}
    return {
        "path": str(pred.path), "units": len(units), "unit_name": pred.unit_name,
        "ok": len(checked) - len(bad), "missing": missing, "corrupt": corrupt,
        "complete": not missing and not corrupt,
    }


def _decodes(pred: Prediction, unit: Triple) -> str | None:
    """Decode a unit whose record has no checksum: ``None`` if it reads, else ``corrupt``."""
    edge = [b * k for b, k in zip(pred.block, pred.shard)]
    region = block_region(unit, pred.shape3, edge)
    try:
        np.asarray(pred.array[region[-pred.array.ndim:]])
    except Exception:  # zarr raises the codec's own error (ValueError for a CRC-32C mismatch, RuntimeError...)
        return "corrupt"
    return None


def _invalidate(pred: Prediction, bad: dict[Triple, tuple[str, list[str]]]) -> None:
    """Let the next ``predict`` redo the units in ``bad``: list their records' ids as invalid (layout 1: remove
    the marker file)."""
    if not bad:
        return
    if pred.legacy:
        for unit in bad:
            (pred.marker_dir / ".".join(map(str, unit))).unlink(missing_ok=True)
        return
    ids = [i for _, unit_ids in bad.values() for i in unit_ids if i]
    with open(pred.invalid_path, "a", encoding="ascii") as f:
        f.write("".join(f"{i}\n" for i in ids))
        f.flush()
        os.fsync(f.fileno())


def verify_message(result: dict[str, Any], *, limit: int = 20) -> str:
    """One line: what is missing or corrupt in a verified prediction."""
    parts = []
    if result["missing"]:
        shown = ", ".join(result["missing"][:limit]) + (" ..." if len(result["missing"]) > limit else "")
        parts.append(f"{len(result['missing'])} missing ({shown})")
    if result["corrupt"]:
        items = list(result["corrupt"].items())
        shown = ", ".join(f"{u}: {r}" for u, r in items[:limit]) + (" ..." if len(items) > limit else "")
        parts.append(f"{len(items)} corrupt ({shown})")
    return f"{result['path']}: {result['ok']} of {result['units']} {result['unit_name']} verified; " + "; ".join(parts)


def check_verified(paths: list[Path], *, workers: int = 2) -> None:
    """Verify each prediction; raise :class:`IncompleteError` naming what is missing or corrupt."""
    raise_unverified([verify(p, workers=workers) for p in paths], then=", then stitch")


def raise_unverified(results: list[dict[str, Any]], *, then: str = "") -> None:
    """Raise :class:`IncompleteError` naming what is missing or corrupt in the :func:`verify` results, if any."""
    bad = [verify_message(r) for r in results if not r["complete"]]
    if bad:
        raise IncompleteError("; ".join(bad) + f": run the same 'rockseg predict' command again to redo exactly "
                              f"those{then}")
