"""The prediction store on disk: the label array, its completion records and the lock of a run; no torch.

A prediction ``PRED.zarr`` is a plain Zarr label array whose attributes hold the run's settings
(``rockseg.settings``), the block edge (``rockseg.block``) and the (Z, Y, X) shape of its grid
(``rockseg.shape3``). Beside the chunks, ``PRED.zarr/.rockseg/`` holds the records that make a run resumable:

- ``done/<z>.<y>.<x>``: one empty file per finished block, written after the block's chunks;
- ``complete``: written once every block is done;
- ``lock-<i>-of-<n>`` (one part of a job array) or ``lock-all``: ``host pid`` of the run writing those blocks.

Re-running the same command skips blocks with a record, so a killed run resumes; a run with other settings is
refused unless it overwrites. An optional class-probability store (uint8, probability * 255) is created beside
it with the same attributes. ``rockseg stitch`` reads these stores without torch.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zarr

from rockseg.errors import IncompleteError, InputError, MissingInputError, OutputExistsError
from rockseg.inference.grid import Triple, block_grid
from rockseg.io.omezarr import new_array_path
from rockseg.io.stores import ATTR_PROVENANCE, compressors_for, open_volume

MARKER_DIR = ".rockseg"


class Prediction:
    """A block-wise prediction store: the label array plus its completion markers.

    The label array is a plain Zarr array (``zarr.open_array(path)`` opens it); its attributes hold the run's
    settings under ``rockseg.settings`` and the block edge under ``rockseg.block``.
    """

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False) -> None:
        self.path = Path(path)
        self.array = open_volume(self.path, name="prediction", mode="r+" if writable else "r")
        meta = dict(self.array.attrs).get(ATTR_PROVENANCE) or {}
        if "block" not in meta or "settings" not in meta:
            raise InputError(
                f"{self.path} is not a rockseg prediction (no block records): give a store written by "
                f"'rockseg predict'"
            )
        self.settings: dict[str, Any] = meta["settings"]
        self.block: Triple = tuple(meta["block"])  # type: ignore[assignment]
        self.shape3: Triple = tuple(meta["shape3"])  # type: ignore[assignment]
        self.probabilities: str | None = meta.get("probabilities")

    @property
    def marker_dir(self) -> Path:
        return self.path / MARKER_DIR / "done"

    def blocks(self) -> list[Triple]:
        return block_grid(self.shape3, self.block)

    def done(self) -> set[Triple]:
        out = set()
        for name in os.listdir(self.marker_dir) if self.marker_dir.exists() else ():
            try:
                out.add(tuple(int(v) for v in name.split(".")))
            except ValueError:
                continue
        return out  # type: ignore[return-value]

    def missing(self) -> list[Triple]:
        done = self.done()
        return [b for b in self.blocks() if b not in done]

    def mark_done(self, index: Triple) -> None:
        (self.marker_dir / ".".join(map(str, index))).touch()

    def mark_complete(self) -> None:
        """Record that every block is done."""
        (self.path / MARKER_DIR / "complete").touch()


def create_prediction(
    out: Path, *, shape: Sequence[int], block: Triple, classes: int, attrs: dict[str, Any],
    probabilities: str | None, overwrite: bool,
) -> Prediction:
    """Create the output store, or reopen it to resume when it holds a run with the same settings."""
    settings = attrs[ATTR_PROVENANCE]["settings"]
    if out.exists() and overwrite:
        shutil.rmtree(out) if out.is_dir() else out.unlink()
        if probabilities and Path(probabilities).exists():
            shutil.rmtree(probabilities)
    if not out.exists():
        if not out.parent.exists():
            raise MissingInputError(f"the folder of output {out} does not exist: create {out.parent} first")
        tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        chunks = block if len(shape) == 3 else block[1:]
        zarr.create_array(
            store=str(new_array_path(tmp, out, len(shape))), shape=tuple(shape), chunks=tuple(chunks), dtype="uint8",
            fill_value=0, dimension_names=list("zyx"[-len(shape):]),
            compressors=compressors_for("blosc-zstd"), attributes=attrs,
        )
        (tmp / MARKER_DIR / "done").mkdir(parents=True)
        if probabilities:
            _create_probabilities(Path(probabilities), shape=shape, chunks=chunks, classes=classes, attrs=attrs)
        try:
            os.rename(tmp, out)
        except OSError:  # another part created it first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        pred = Prediction(out, writable=True)
    except InputError:
        raise OutputExistsError(
            f"{out} exists and is not a rockseg prediction: choose another output or pass --overwrite"
        ) from None
    if pred.settings != settings:
        changed = sorted(k for k in set(settings) | set(pred.settings) if settings.get(k) != pred.settings.get(k))
        raise OutputExistsError(
            f"{out} holds a prediction made with other settings ({', '.join(changed)}): re-run with the same "
            f"model and options to resume it, or pass --overwrite to start again"
        )
    if pred.block != block:
        raise OutputExistsError(
            f"{out} was written with --block {pred.block[-1]}, not {block[-1]}: use the same block to resume it, "
            f"or pass --overwrite"
        )
    return pred


def _create_probabilities(path: Path, *, shape: Sequence[int], chunks: Sequence[int], classes: int,
                          attrs: dict[str, Any]) -> None:
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    zarr.create_array(
        store=str(tmp), shape=(classes, *shape), chunks=(classes, *chunks), dtype="uint8", fill_value=0,
        compressors=compressors_for("blosc-zstd"),
        attributes={**attrs, "scale": "probability * 255, rounded", "axes": "C" + "ZYX"[-len(shape):]},
    )
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def check_complete(path: str | os.PathLike[str], *, limit: int = 20) -> Prediction:
    """Open a prediction and raise :class:`IncompleteError` listing missing blocks if it is not complete."""
    pred = Prediction(path)
    missing = pred.missing()
    if missing:
        shown = ", ".join(".".join(map(str, b)) for b in missing[:limit])
        more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
        raise IncompleteError(
            f"{pred.path} is incomplete: {len(missing)} of {len(pred.blocks())} blocks missing ({shown}{more}): "
            f"run the same 'rockseg predict' command (or the missing parts) again to finish it"
        )
    return pred


class RunLock:
    """One lock file per part in the output, so that the same blocks are never run twice at once.

    Runs of different parts work side by side. A lock left by a run that died on this host is taken over; one
    held by a live process (or by another host) makes the second run refuse with a clear message. The file names
    (``lock-<i>-of-<n>``, ``lock-all``) are those of earlier versions, which called parts shards, so that a run
    of either version sees the other's lock.
    """

    def __init__(self, out: Path, part: tuple[int, int] | None) -> None:
        name = f"lock-{part[0]}-of-{part[1]}" if part else "lock-all"
        self.path = out / MARKER_DIR / name

    def __enter__(self) -> RunLock:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, _, pid = self.path.read_text().partition(" ")
                if host == socket.gethostname() and pid.strip().isdigit() and not _alive(int(pid)):
                    self.path.unlink(missing_ok=True)  # left by a run that was killed: take it over
                    continue
                raise OutputExistsError(
                    f"{self.path.parent.parent} is being written by another 'rockseg predict' (process {pid.strip()} "
                    f"on {host}) for the same blocks: wait for it, run another --part, or delete {self.path} if that "
                    f"run is dead"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return self
        raise OutputExistsError(f"could not take the lock {self.path}: delete it if no run is writing this output")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
