"""Running the units of a score with a bounded number in flight: on this process's threads or on a Dask cluster.

:func:`run_bounded` submits at most two tasks per worker thread at a time and yields their results as they
complete, so neither the task graph nor the results held grow with the volume: a 10^12-voxel volume is a stream
of a few hundred thousand tasks, never a graph of them. On a cluster (``scheduler``, the address of a running
Dask distributed scheduler) what every task shares is sent to the workers once.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from rockseg.errors import InputError

__all__ = ["connect", "run_bounded"]

#: Seconds to wait for a Dask scheduler before giving up with exit code 2.
CONNECT_TIMEOUT_S = 20

Item = tuple[Hashable, tuple[Any, ...]]


def run_bounded(fn: Callable[..., Any], shared: Any, items: Iterator[Item], *, scheduler: str | None = None,
                num_workers: int | None = None) -> Iterator[tuple[Hashable, Any]]:
    """``(key, fn(shared, *args))`` for every ``(key, args)`` of ``items``, in the order they complete."""
    if scheduler:
        return _distributed(fn, shared, items, scheduler)
    return _threads(fn, shared, items, num_workers or os.cpu_count() or 1)


def _threads(fn: Callable[..., Any], shared: Any, items: Iterator[Item], workers: int) -> Iterator[tuple[Hashable, Any]]:
    slots = 2 * workers
    pool = ThreadPoolExecutor(workers, thread_name_prefix="rockseg-score")
    keys: dict[Any, Hashable] = {}
    try:
        while True:
            for key, args in itertools.islice(items, slots - len(keys)):
                keys[pool.submit(fn, shared, *args)] = key
            if not keys:
                return
            done, _ = wait(keys, return_when=FIRST_COMPLETED)
            for future in done:
                yield keys.pop(future), future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def connect(address: str) -> Any:
    """A Dask distributed client of the scheduler at ``address``; InputError if it cannot be reached in time."""
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler needs Dask distributed: pip install 'rockseg[distributed]'") from None
    try:
        return Client(address, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as error:
        # A timeout says only what the message says already; a malformed address is worth the reason.
        reason = "" if isinstance(error, OSError) else f" ({str(error).splitlines()[0] if str(error) else error!r})"
        raise InputError(
            f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s{reason}: start one "
            f"(e.g. 'dask scheduler' prints its tcp://HOST:PORT) and give that address to --scheduler, or leave "
            f"--scheduler out to run on this machine's threads"
        ) from None


def _distributed(fn: Callable[..., Any], shared: Any, items: Iterator[Item],
                 address: str) -> Iterator[tuple[Hashable, Any]]:
    from distributed import as_completed

    client = connect(address)
    try:
        [remote] = client.scatter([shared], broadcast=True, hash=False)
        slots = max(2, 2 * sum(client.nthreads().values()))
        keys: dict[Any, Hashable] = {}

        def submit(batch: Iterator[Item]) -> list[Any]:
            futures = []
            for key, args in batch:
                future = client.submit(fn, remote, *args, pure=False)
                keys[future] = key
                futures.append(future)
            return futures

        queue = as_completed(submit(itertools.islice(items, slots)), loop=client.loop)
        for future in queue:
            key = keys.pop(future)
            result = future.result()
            del future  # the scheduler forgets a result nobody holds
            yield key, result
            for new in submit(itertools.islice(items, 1)):
                queue.add(new)
    finally:
        client.close()
