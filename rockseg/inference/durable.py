"""Durable, verifiable completion of a prediction's units (shard files); no torch.

Before a unit's completion record is appended (:mod:`.store`), :func:`seal` flushes the unit's shard file of
labels (and of probabilities) and their folders to disk (``fsync``) and returns the fields its record carries:
``size=`` and ``crc32c=`` of the labels file (``psize=``, ``pcrc32c=`` of the probabilities file), so that a node
crash can no longer leave a record whose data was lost, and any later reader can check the data against the record.
A shard whose blocks are all the fill value has no file: its record says ``size=0``.

:func:`verify` re-reads every unit of a prediction and checks it against its records (CRC-32C of the file's
bytes; records of older versions without a checksum: the unit is decoded, which checks the chunks' own CRC-32C
where the store has one); the records that do not verify are listed in ``.rockseg/invalid`` so that the next
``predict`` redoes exactly those units. :func:`files_match` is the cheap check a resume makes (the files exist
and have the recorded sizes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import google_crc32c

FIELDS = (("size", "crc32c"), ("psize", "pcrc32c"))  # labels file, probabilities file


def chunk_file(root: str | os.PathLike[str], array: Any, coords: Sequence[int]) -> Path:
    """The file holding chunk (or shard) ``coords`` of ``array`` stored at ``root``."""
    return Path(root) / array.metadata.encode_chunk_key(tuple(coords))


def fsync_path(path: Path) -> None:
    """Flush a file or a folder to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checksum(path: Path) -> tuple[int, str]:
    """``(size, crc32c hex)`` of a file's bytes; ``(0, "0")`` for a file that does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, "0"
    return len(data), f"{google_crc32c.value(data):08x}"


def seal(files: Sequence[Path]) -> dict[str, Any]:
    """Flush ``files`` (labels, then probabilities) and their folders; the record fields of what they hold."""
    fields: dict[str, Any] = {}
    for path, (size_key, crc_key) in zip(files, FIELDS):
        if path.exists():
            fsync_path(path)
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        fsync_path(folder)
        size, crc = checksum(path)
        fields[size_key], fields[crc_key] = size, crc
    return fields


def files_match(files: Sequence[Path], record: dict[str, str]) -> bool:
    """The cheap check of a resume: each file with a recorded size exists with that size (absent for 0)."""
    for path, (size_key, _) in zip(files, FIELDS):
        if size_key not in record:
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if str(size) != record[size_key]:
            return False
    return True


def check_record(files: Sequence[Path], record: dict[str, str]) -> str | None:
    """``None`` if the files hold what ``record`` says, else what is wrong (``missing``, ``truncated``,
    ``corrupt``)."""
    for path, (size_key, crc_key) in zip(files, FIELDS):
        if crc_key not in record:
            continue
        size, crc = checksum(path)
        if str(size) != record[size_key]:
            return "missing" if size == 0 else "truncated" if size < int(record[size_key]) else "corrupt"
        if crc != record[crc_key]:
            return "corrupt"
    return None
