"""What a prediction (or a probability store) was made from, and the one-line difference when a run does not
match it; no torch.

A prediction records, in its settings (``rockseg.settings.input``), the input's shape, dtype and chunking and a
cheap *fingerprint*: a SHA-256 of the input's metadata (its ``zarr.json`` or ``.zarray``/``.zattrs``, without
the ``intensity`` attribute that ``predict`` itself may add) and of the decoded bytes of a deterministic sample
of its chunks (:data:`SAMPLE` of them, spread over the chunk grid, first and last included). Reading those costs
a few chunks whatever the volume's size. It catches another scan, a re-conversion and a crop or cast; it cannot
catch an edit confined to chunks outside the sample (say so: the README's "Resumable" paragraph does).
The input's path is recorded too (``source``) but not compared: a volume moved or copied resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import zarr

from rockseg.errors import InputError

SAMPLE = 4  # chunks of the input read for its fingerprint
IGNORED_ATTRS = ("intensity",)  # attributes predict may add to its input


def input_identity(array: zarr.Array, name: str) -> dict[str, Any]:
    """Shape, dtype, chunks and fingerprint of an input array (see the module's docstring)."""
    meta = array.metadata.to_dict()
    attrs = {k: v for k, v in (meta.get("attributes") or {}).items() if k not in IGNORED_ATTRS}
    meta = {k: v for k, v in meta.items() if k != "attributes"}
    h = hashlib.sha256(json.dumps([meta, attrs], sort_keys=True, default=str).encode())
    for region in sample_chunks(array.shape, array.chunks):
        try:
            h.update(np.ascontiguousarray(array[region]).tobytes())
        except Exception as exc:  # a corrupt chunk: zarr raises the codec's error (ValueError, RuntimeError...)
            where = ",".join(f"{r.start}:{r.stop}" for r in region)
            raise InputError(
                f"{name}: the chunk at {where} cannot be read ({exc}): repair or re-convert the input"
            ) from None
    return {"shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks),
            "fingerprint": h.hexdigest()[:32]}


def sample_chunks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The regions of :data:`SAMPLE` chunks spread evenly over the chunk grid (C order), first and last included."""
    counts = [math.ceil(n / c) for n, c in zip(shape, chunks)]
    total = math.prod(counts)
    picks = sorted({i * (total - 1) // max(SAMPLE - 1, 1) for i in range(SAMPLE)})
    regions = []
    for flat in picks:
        index = np.unravel_index(flat, counts)
        regions.append(tuple(slice(int(i) * c, min((int(i) + 1) * c, n)) for i, c, n in zip(index, chunks, shape)))
    return regions


def differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``key (was A, now B), ...`` for every setting that differs (the input's fields one by one)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "input" and isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"input {k} (was {_short(a.get(k))}, now {_short(b.get(k))})"
                       for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        else:
            out.append(f"{key} (was {_short(a)}, now {_short(b)})")
    return ", ".join(out)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def comparable(recorded: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without the keys an older store did not record (so that it still resumes); a key recorded
    with a value that older runs always had (``specks`` 0) only where it has that value."""
    return {k: v for k, v in settings.items()
            if k in recorded or (k not in NEW_KEYS and (k not in OLD_VALUES or v != OLD_VALUES[k]))}


NEW_KEYS = ("input", "mask_input")  # settings older stores did not record
OLD_VALUES = {"specks": 0}  # settings older stores did not record, with the value their runs had
