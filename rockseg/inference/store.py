"""The prediction store on disk: the label array, its completion records and the lock of a run; no torch.

Layout (version 2, written since rockseg 0.x; ``rockseg.layout`` = 2)::

    PRED.zarr/
      zarr.json              Zarr v3 array, sharding codec: inner chunk = one block, shard = K x K x K blocks
      c/<z>/<y>/<x>          one file per shard (the unit of work): written only by the run that owns it
      .rockseg/records/<w>   completion records, one append-only text file per writer <w> (``all`` for a
                             whole run, ``part-<i>-of-<n>`` for one part of a job array)
      .rockseg/complete      written once every shard is done
      .rockseg/claims/<z>.<y>.<x>  ``host pid since run`` of the run computing that shard (:mod:`.claims`)
      .rockseg/invalid       ids of records that ``rockseg verify`` found not to match their data
      .rockseg/lock-<i>-of-<n>, lock-all   ``host pid`` of the run writing those shards
      .rockseg/intensity.json  the input's intensity statistics, when they could not be stored in the input

The *unit of work* is one shard: ``K`` blocks along each axis (``rockseg.shard`` holds ``[Kz, Ky, Kx]``,
smaller where the volume has fewer blocks). ``K`` defaults to the smallest edge that keeps the store at most
:data:`MAX_SHARDS` shard files (so a 10,000^3 volume with 144^3 blocks has 24^3 shards of 432^3 voxels, 80 MB of
labels each; a volume up to ~16,000 blocks keeps one block per shard). A part of a job array (``--part I/N``)
runs shards ``I, I + N, ...`` of the C-order shard grid, so no two parts ever write the same shard file; inside
one process the writes of blocks that share a shard are serialised (:func:`shard_lock`), and each shard file is
replaced atomically by zarr. A shard is recorded only after all its blocks are written: a killed run loses at
most the shards in flight, and a resume recomputes them whole.

A completion record is one line ``<z>.<y>.<x> size=N crc32c=H [psize=N pcrc32c=H] id=I`` (the shard index, the
size and CRC-32C of its labels file and of its probabilities file, and the record's id), appended by one
``write`` to the writer's file once the shard's files and folders are flushed to disk (:mod:`.durable`); a line
without its newline (a crash in the middle) is ignored, and lines of earlier versions (the index alone) are
read as they were. Listing what is done reads a few files whatever the number of shards (~100,000 lines in a few tens of
milliseconds), never a directory of one file per block.

Layout 1 (before): a plain chunked array (chunk = block) with one empty file ``.rockseg/done/<z>.<y>.<x>`` per
finished block; such predictions still open, resume (in their own layout), stitch and score: they are read as
one block per shard.

Re-running the same command skips shards with a valid record whose files have the recorded sizes (a shard
file lost after its record is redone), so a killed run resumes; a run from another input (:mod:`.identity`) or
with other settings is refused unless it overwrites. An optional class-probability store (uint8, probability * 255) is created beside
it with the same shards. ``rockseg stitch`` reads these stores without torch.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zarr

from rockseg.errors import IncompleteError, InputError, MissingInputError, OutputExistsError, OutputWriteError
from rockseg.inference.claims import process_alive
from rockseg.inference.grid import Triple, block_grid
from rockseg.inference.durable import chunk_file, files_match
from rockseg.inference.identity import comparable, differences
from rockseg.io.omezarr import label_array_path, new_array_path
from rockseg.io.stores import ATTR_PROVENANCE, compressors_for, open_volume

MARKER_DIR = ".rockseg"
RECORDS = "records"
STATS_FILE = "intensity.json"  # the input's statistics, kept here when the input cannot be written
LAYOUT = 2
MAX_SHARDS = 16384  # shard files per store at most, with the default shard edge
_LOCKS = tuple(threading.Lock() for _ in range(64))  # striped per-shard write locks of this process


def checked_compressors() -> list[Any]:
    """The codecs of every chunk rockseg's predictions and stitched labels hold: Blosc-zstd, then a CRC-32C of
    the compressed bytes (zarr v3's ``crc32c`` codec), so that any Zarr reader detects a corrupt chunk; the
    sharding codec's index carries its own CRC-32C (zarr's default)."""
    return [*compressors_for("blosc-zstd"), zarr.codecs.Crc32cCodec()]


def default_shard(shape3: Sequence[int], block: Sequence[int]) -> Triple:
    """Blocks per shard along (Z, Y, X): the smallest common edge ``K`` giving at most :data:`MAX_SHARDS` shards.

    >>> default_shard((10_000,) * 3, (144,) * 3)
    (3, 3, 3)
    >>> default_shard((64, 64, 64), (16, 16, 16))
    (1, 1, 1)
    """
    counts = [math.ceil(n / b) for n, b in zip(shape3, block)]
    k = 1
    while math.prod(math.ceil(c / k) for c in counts) > MAX_SHARDS:
        k += 1
    return tuple(min(k, c) for c in counts)  # type: ignore[return-value]


def shard_lock(array: zarr.Array, region: Sequence[slice]) -> contextlib.AbstractContextManager[Any]:
    """A lock of this process for the shard of ``array`` that ``region`` (one block) lies in.

    Zarr rewrites a whole shard file to write part of it, so two threads writing blocks of one shard at once
    would lose one of them; blocks of different shards (different files) are written side by side.
    """
    shards = getattr(array, "shards", None)
    if shards is None:
        return contextlib.nullcontext()
    index = tuple(r.start // s for r, s in zip(region, shards[-len(region):]))
    return _LOCKS[hash((str(array.store), index)) % len(_LOCKS)]


class Prediction:
    """A prediction store: the label array plus its completion records (see the module's docstring).

    The label array is a plain Zarr array (``zarr.open_array(path)`` opens it); its attributes hold the run's
    settings under ``rockseg.settings``, the block edge under ``rockseg.block`` and the blocks per shard under
    ``rockseg.shard`` (absent in layout 1: one block per unit, one marker file per block).
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
        self.legacy = "shard" not in meta  # layout 1: a marker file per block
        self.shard: Triple = (1, 1, 1) if self.legacy else tuple(meta["shard"])  # type: ignore[assignment]
        self._probs: zarr.Array | None = None  # the probability store, opened on first need

    @property
    def marker_dir(self) -> Path:
        """Layout 1's folder of one marker file per finished block."""
        return self.path / MARKER_DIR / "done"

    @property
    def records_dir(self) -> Path:
        return self.path / MARKER_DIR / RECORDS

    @property
    def unit_name(self) -> str:
        return "blocks" if self.shard == (1, 1, 1) else f"shards of {'x'.join(map(str, self.shard))} blocks"

    def block_counts(self) -> Triple:
        return tuple(math.ceil(n / b) for n, b in zip(self.shape3, self.block))  # type: ignore[return-value]

    def blocks(self) -> list[Triple]:
        return block_grid(self.shape3, self.block)

    def units(self) -> list[Triple]:
        """The units of work (shards; blocks in layout 1), numbered (z, y, x) in C order."""
        return block_grid(self.block_counts(), self.shard)

    def unit_blocks(self, unit: Sequence[int]) -> list[Triple]:
        """The blocks of one unit, in C order."""
        ranges = [range(u * k, min((u + 1) * k, n)) for u, k, n in zip(unit, self.shard, self.block_counts())]
        return [(z, y, x) for z in ranges[0] for y in ranges[1] for x in ranges[2]]

    def done(self, *, check_files: bool = False) -> set[Triple]:
        """The units recorded as done (a record that ``rockseg verify`` found wrong does not count); with
        ``check_files``, only those whose files also exist with their recorded sizes (what a resume trusts)."""
        if self.legacy:
            names = os.listdir(self.marker_dir) if self.marker_dir.exists() else ()
            return {idx for idx in map(_parse_index, names) if idx is not None}
        records = self.records()
        if not check_files:
            return set(records)
        return {u for u, recs in records.items() if any(files_match(self.unit_files(u), r) for r in recs)}

    def records(self) -> dict[Triple, list[dict[str, str]]]:
        """Every valid completion record's fields, by unit (records listed in ``.rockseg/invalid`` left out)."""
        invalid = set(self.invalid_path.read_text().split()) if self.invalid_path.exists() else set()
        out: dict[Triple, list[dict[str, str]]] = {}
        for name in os.listdir(self.records_dir) if self.records_dir.exists() else ():
            if name.startswith("."):
                continue
            for unit, fields in read_record_fields(self.records_dir / name):
                if fields.get("id") not in invalid:
                    out.setdefault(unit, []).append(fields)
        return out

    @property
    def invalid_path(self) -> Path:
        """Ids of completion records that ``rockseg verify`` found not to match their data, one a line."""
        return self.path / MARKER_DIR / "invalid"

    def unit_files(self, unit: Sequence[int]) -> list[Path]:
        """The files of one unit: its shard (chunk, in layout 1) of labels, and of probabilities if any."""
        if self._probs is None and self.probabilities and Path(self.probabilities).exists():
            self._probs = zarr.open_array(store=self.probabilities, mode="r")
        return unit_files(self.path, self.array, self.probabilities, self._probs, unit)

    def missing(self) -> list[Triple]:
        """The units not yet done, in C order (by their records: ``rockseg verify`` checks the data)."""
        done = self.done()
        return [u for u in self.units() if u not in done]

    def recorder(self, part: tuple[int, int] | None) -> CompletionLog:
        """The completion log this run (the whole job, or one part of it) appends its finished units to."""
        if self.legacy:
            return CompletionLog(self.marker_dir, legacy=True)
        name = f"part-{part[0]}-of-{part[1]}" if part else "all"
        return CompletionLog(self.records_dir / name)

    def mark_complete(self) -> None:
        """Record that every unit is done (the claims of the runs that did them are no longer needed)."""
        (self.path / MARKER_DIR / "complete").touch()
        shutil.rmtree(self.path / MARKER_DIR / "claims", ignore_errors=True)


def unit_files(path: str | os.PathLike[str], labels: zarr.Array, probabilities_path: str | None,
               probabilities: zarr.Array | None, unit: Sequence[int]) -> list[Path]:
    """The files of one unit of the prediction at ``path``: its shard (chunk, in layout 1) of ``labels``, and of
    ``probabilities`` (stored at ``probabilities_path``) when given."""
    coords = tuple(unit)[-labels.ndim:]
    files = [chunk_file(label_array_path(path), labels, coords)]
    if probabilities is not None:
        files.append(chunk_file(str(probabilities_path), probabilities, (0, *coords)))
    return files


def _parse_index(text: str) -> Triple | None:
    try:
        index = tuple(int(v) for v in text.split("."))
    except ValueError:
        return None
    return index if len(index) == 3 else None  # type: ignore[return-value]


def read_records(path: Path) -> set[Triple]:
    """The unit indices recorded in one completion log (a last line cut short by a crash is ignored)."""
    return {unit for unit, _ in read_record_fields(path)}


def read_record_fields(path: Path) -> list[tuple[Triple, dict[str, str]]]:
    """The records of one completion log: unit index and ``key=value`` fields, in order."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.split("\n")[:-1]:  # the text after the last newline is an unfinished record
        head, *rest = line.split(" ")
        idx = _parse_index(head)
        if idx is not None:
            out.append((idx, dict(f.split("=", 1) for f in rest if "=" in f)))
    return out


class CompletionLog:
    """Append-only completion records of one writer: one line per finished unit, written by one ``write``.

    Use as a context manager; :meth:`record` is thread-safe. Call it only once the unit's data is written.
    """

    def __init__(self, path: Path, *, legacy: bool = False) -> None:
        self.path = path
        self.legacy = legacy
        self._fd: int | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> CompletionLog:
        if not self.legacy:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputWriteError(f"cannot write the completion records {self.path}: {exc.strerror}") from None
        return self

    def record(self, unit: Sequence[int], **fields: Any) -> None:
        """Record unit ``unit`` as done; ``fields`` (``key=value``) are kept on its line for later readers."""
        name = ".".join(map(str, unit))
        if self.legacy:
            (self.path / name).touch()
            return
        fields = {**fields, "id": uuid.uuid4().hex[:12]}  # names this record, for 'rockseg verify'
        line = " ".join([name, *(f"{k}={v}" for k, v in fields.items())]) + "\n"
        with self._lock:
            assert self._fd is not None, "CompletionLog.record outside its 'with'"
            os.write(self._fd, line.encode("ascii"))

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def create_prediction(
    out: Path, *, shape: Sequence[int], block: Triple, classes: int, attrs: dict[str, Any],
    probabilities: str | None, overwrite: bool, shard: Triple | None = None,
) -> Prediction:
    """Create the output store, or reopen it to resume when it holds a run with the same settings.

    ``shard`` (blocks per shard along Z, Y, X) defaults to :func:`default_shard`; a store that exists keeps its
    own (an old one of layout 1 resumes in layout 1).
    """
    settings = attrs[ATTR_PROVENANCE]["settings"]
    asked = shard
    if shard is None:
        shard = default_shard(attrs[ATTR_PROVENANCE]["shape3"], block)
    if overwrite:
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        if probabilities and Path(probabilities).exists():
            shutil.rmtree(probabilities)
    elif probabilities:
        _check_probabilities(Path(probabilities), settings)
    if not out.exists():
        _create_new(out, shape=shape, block=block, shard=shard, classes=classes, attrs=attrs,
                    probabilities=probabilities)
    try:
        pred = Prediction(out, writable=True)
    except InputError:
        raise OutputExistsError(
            f"{out} exists and is not a rockseg prediction: choose another output or pass --overwrite"
        ) from None
    if pred.settings != comparable(pred.settings, settings):
        raise OutputExistsError(
            f"{out} holds a prediction made from another input or with other settings: "
            f"{differences(pred.settings, comparable(pred.settings, settings))}: re-run with the same input, model "
            f"and options to resume it, or pass --overwrite to start again"
        )
    if pred.block != block:
        raise OutputExistsError(
            f"{out} was written with --block {pred.block[-1]}, not {block[-1]}: use the same block to resume it, "
            f"or pass --overwrite"
        )
    if asked is not None and pred.shard != tuple(asked):
        raise OutputExistsError(
            f"{out} holds shards of {'x'.join(map(str, pred.shard))} blocks, not {'x'.join(map(str, asked))}: "
            f"resume it without --shard-blocks (or with the same), or pass --overwrite"
        )
    return pred


def _create_new(out: Path, *, shape: Sequence[int], block: Triple, shard: Triple, classes: int,
                attrs: dict[str, Any], probabilities: str | None) -> None:
    """Build a new prediction store under a temporary name and rename it into place."""
    if not out.parent.exists():
        raise MissingInputError(f"the folder of output {out} does not exist: create {out.parent} first")
    meta = attrs[ATTR_PROVENANCE]
    attrs = {**attrs, ATTR_PROVENANCE: {**meta, "shard": list(shard), "layout": LAYOUT}}
    chunks = block if len(shape) == 3 else block[1:]
    shards = tuple(b * k for b, k in zip(block, shard))[-len(shape):]
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        zarr.create_array(
            store=str(new_array_path(tmp, out, len(shape))), shape=tuple(shape), chunks=tuple(chunks), shards=shards,
            dtype="uint8", fill_value=0, dimension_names=list("zyx"[-len(shape):]),
            compressors=checked_compressors(), attributes=attrs,
        )
        (tmp / MARKER_DIR / RECORDS).mkdir(parents=True)
        created_probs = bool(probabilities) and _create_probabilities(
            Path(probabilities), shape=shape, chunks=chunks, shards=shards, classes=classes, attrs=attrs)
    except OutputWriteError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputWriteError(f"cannot create {out}: {exc.strerror or exc}: free space or fix permissions") from None
    try:
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and out.exists():
            return  # another part of the job array created it first: use theirs
        if probabilities and created_probs:
            shutil.rmtree(probabilities, ignore_errors=True)
        raise OutputWriteError(
            f"cannot create {out}: renaming {tmp.name} into place failed ({exc.strerror or exc}): free space or "
            f"fix permissions"
        ) from None


def _create_probabilities(path: Path, *, shape: Sequence[int], chunks: Sequence[int], shards: Sequence[int],
                          classes: int, attrs: dict[str, Any]) -> bool:
    """Create the probability store (under a temporary name, renamed into place); False if it exists."""
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    zarr.create_array(
        store=str(tmp), shape=(classes, *shape), chunks=(classes, *chunks), shards=(classes, *shards), dtype="uint8",
        fill_value=0, compressors=checked_compressors(),
        attributes={**attrs, "scale": "probability * 255, rounded", "axes": "C" + "ZYX"[-len(shape):]},
    )
    try:
        os.rename(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and path.exists():
            return False  # another part created it first
        raise OutputWriteError(
            f"cannot create the probabilities {path}: renaming {tmp.name} into place failed "
            f"({exc.strerror or exc}): free space or fix permissions"
        ) from None
    return True


def _check_probabilities(path: Path, settings: dict[str, Any]) -> None:
    """Refuse an existing probability store made by another run (other input or settings)."""
    if not path.exists():
        return
    try:
        meta = dict(zarr.open_array(store=str(path), mode="r").attrs).get(ATTR_PROVENANCE) or {}
    except Exception:
        meta = {}
    recorded = meta.get("settings")
    if recorded is None:
        raise OutputExistsError(
            f"--probabilities {path} exists and is not the probability store of a rockseg prediction: choose "
            f"another path or pass --overwrite"
        )
    if recorded != comparable(recorded, settings):
        raise OutputExistsError(
            f"--probabilities {path} holds probabilities of another run: "
            f"{differences(recorded, comparable(recorded, settings))}: choose another path or pass --overwrite"
        )


def missing_message(pred: Prediction, missing: Sequence[Triple], *, limit: int = 20) -> str:
    """``N of M blocks missing (z.y.x, ...)`` (or shards), naming at most ``limit`` of them."""
    shown = ", ".join(".".join(map(str, b)) for b in missing[:limit])
    more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
    return f"{len(missing)} of {len(pred.units())} {pred.unit_name} missing ({shown}{more})"


def check_complete(path: str | os.PathLike[str], *, limit: int = 20) -> Prediction:
    """Open a prediction and raise :class:`IncompleteError` listing missing units if it is not complete."""
    pred = Prediction(path)
    missing = pred.missing()
    if missing:
        raise IncompleteError(
            f"{pred.path} is incomplete: {missing_message(pred, missing, limit=limit)}: run the same "
            f"'rockseg predict' command (or the missing parts) again to finish it"
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
                if host == socket.gethostname() and pid.strip().isdigit() and not process_alive(int(pid)):
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
