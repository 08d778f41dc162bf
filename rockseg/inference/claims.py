"""Claims: one run per unit of work, whatever the part specs of the runs writing one prediction; no torch.

Before a run computes a unit (a shard), it creates ``PRED/.rockseg/claims/<z>.<y>.<x>`` atomically (a hard link
of a file already written, which fails when the claim exists) holding ``host pid since run``. A unit claimed by a
live run is skipped (that run computes it); a claim whose process is dead on this host (a run killed with
``kill -9``, or an earlier run of this very process) is taken over, under an exclusive ``flock`` of the folder so
that two runs never both remove it. A claim stays once its unit is recorded (a run that read the records earlier
then finds it, and reads the records again if it takes the claim over); the claims of units a run did not finish
are removed when it ends, and the whole folder once the prediction is complete. A claim from another host cannot
be checked: it is skipped, and ``predict`` reports it (``claimed_by_others``; delete the file once that run is
known dead). So ``--part 0/2``, ``--part 0/4`` and a run without parts on one output cooperate: each unit is
computed once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

CLAIMS = "claims"


class Claims:
    """The claims of one run on one prediction (see the module's docstring)."""

    def __init__(self, marker_dir: Path) -> None:
        self.dir = marker_dir / CLAIMS
        self.host = socket.gethostname()
        self.run = uuid.uuid4().hex[:8]
        self.mine: set[str] = set()
        self.held_by_others: dict[str, str] = {}  # unit name -> "host pid since"
        self.stale: str | None = None  # after take(): the dead run whose claim it took over, if any

    def take(self, unit: Sequence[int]) -> bool:
        """Claim ``unit`` for this run; False when a live run (or one on another host) holds it."""
        name = ".".join(map(str, unit))
        path = self.dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.stale = None
        tmp = self.dir / f".{name}.{self.run}"
        tmp.write_text(f"{self.host} {os.getpid()} {since} {self.run}\n")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, path)  # atomic: the claim appears whole, or not at all when another exists
                except FileExistsError:
                    with _takeover_lock(self.dir):  # only under it is a claim ever removed by another run
                        holder = _read(path)
                        if holder is not None and not self._stale(holder):
                            self.held_by_others[name] = " ".join(holder[:3])
                            return False
                        if holder is not None:
                            self.stale = " ".join(holder)
                        path.unlink(missing_ok=True)
                    continue
                self.mine.add(name)
                return True
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _stale(self, holder: list[str]) -> bool:
        host, pid = holder[0], holder[1]
        if host != self.host or not pid.isdigit():
            return False
        if int(pid) == os.getpid():  # an earlier run of this process (a later one of the same run never asks)
            return len(holder) < 4 or holder[3] != self.run
        return not process_alive(int(pid))

    def keep(self, unit: Sequence[int]) -> None:
        """``unit`` is recorded: its claim stays, so that a run that read the records before cannot claim it
        afresh (it finds the claim, and checks the records again when it takes it over)."""
        self.mine.discard(".".join(map(str, unit)))

    def release_all(self) -> None:
        for name in list(self.mine):
            (self.dir / name).unlink(missing_ok=True)
        self.mine.clear()


@contextlib.contextmanager
def _takeover_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock (``flock``) of the claims folder, held while a stale claim is removed."""
    fd = os.open(folder / ".takeover", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: Path) -> list[str] | None:
    try:
        fields = path.read_text().split()
    except FileNotFoundError:
        return None
    return fields if len(fields) >= 2 else None


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
