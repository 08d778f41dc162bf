"""Many small tasks with a bounded number in flight, on threads of this process or a Dask distributed cluster.

One place for what ``predict``, ``stitch`` and ``score`` share at cluster scale (issue 16): :func:`connect` reaches
a scheduler or fails within :data:`CONNECT_TIMEOUT` seconds with one line (exit code 2), and :func:`run_bounded`
streams a long iterator of tasks through at most two per worker thread, yielding results as they complete, so
neither the task graph nor the results held grow with the volume: a 10^12-voxel volume is a stream of a few
hundred thousand tasks, never one graph of them. :func:`map_batches` groups many tiny items into fewer tasks.
No torch; the ground floor (imports only :mod:`rockseg.errors`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from rockseg.errors import InputError

__all__ = ["CONNECT_TIMEOUT", "connect", "map_batches", "run_bounded"]

#: Seconds to wait for a Dask scheduler before giving up with exit code 2.
CONNECT_TIMEOUT = 20.0

_T = TypeVar("_T")
_R = TypeVar("_R")
Item = tuple[Hashable, tuple[Any, ...]]


def connect(address: str, *, timeout: float | None = None) -> Any:
    """A Dask distributed client of the scheduler at ``address``; :class:`InputError` if none answers within
    ``timeout`` seconds (default :data:`CONNECT_TIMEOUT`)."""
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler needs Dask distributed: pip install 'rockseg[distributed]'") from None
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as error:
        # A timeout says only what the message says already; a malformed address is worth the reason.
        reason = "" if isinstance(error, OSError) else f" ({(str(error).splitlines() or [repr(error)])[0][:120]})"
        raise InputError(
            f"--scheduler {address}: no Dask scheduler answered within {timeout:g} s{reason}: start one "
            f"('dask scheduler' prints its tcp://HOST:PORT) and pass that address, or leave --scheduler out to run "
            f"on this machine's threads"
        ) from None


def run_bounded(fn: Callable[..., Any], shared: Any, items: Iterable[Item], *, client: Any = None,
                scheduler: str | None = None, workers: int | None = None) -> Iterator[tuple[Hashable, Any]]:
    """``(key, fn(shared, *args))`` for every ``(key, args)`` of ``items``, in the order they complete.

    ``client``: a Dask distributed client (``fn``, ``shared`` and the arguments must pickle; ``shared`` is sent to
    the workers once); ``scheduler``: the address of one to connect to for this run; neither: ``workers`` threads
    of this process (default: one per CPU). Items are drawn as slots free up; the first error stops the run and is
    raised.
    """
    items = iter(items)
    if client is not None:
        return _distributed(fn, shared, items, client)
    if scheduler:
        return _connected(fn, shared, items, scheduler)
    return _threads(fn, shared, items, workers or os.cpu_count() or 1)


def map_batches(fn: Callable[[_T], _R], items: Iterable[_T], *, batch: int = 1, workers: int = 2, client: Any = None,
                done: Callable[[list[_R]], None] | None = None) -> None:
    """Run ``fn`` on every item, ``batch`` items per task (:func:`run_bounded`); ``done`` gets each batch's
    results, in this process, as batches finish (in any order)."""
    it = iter(items)
    batches = ((i, (b,)) for i, b in enumerate(iter(lambda: list(itertools.islice(it, batch)), [])))
    for _, results in run_bounded(_run_batch, fn, batches, client=client, workers=workers):
        if done is not None:
            done(results)


def _run_batch(fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
    return [fn(item) for item in items]


def _threads(fn: Callable[..., Any], shared: Any, items: Iterator[Item], workers: int) -> Iterator[tuple[Hashable, Any]]:
    slots = 2 * workers
    pool = ThreadPoolExecutor(workers, thread_name_prefix="rockseg-task")
    keys: dict[Any, Hashable] = {}
    try:
        while True:
            for key, args in itertools.islice(items, slots - len(keys)):
                keys[pool.submit(fn, shared, *args)] = key
            if not keys:
                return
            finished, _ = wait(keys, return_when=FIRST_COMPLETED)
            for future in finished:
                yield keys.pop(future), future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _connected(fn: Callable[..., Any], shared: Any, items: Iterator[Item],
               address: str) -> Iterator[tuple[Hashable, Any]]:
    client = connect(address)
    try:
        yield from _distributed(fn, shared, items, client)
    finally:
        client.close()


def _distributed(fn: Callable[..., Any], shared: Any, items: Iterator[Item],
                 client: Any) -> Iterator[tuple[Hashable, Any]]:
    from distributed import as_completed

    [remote] = client.scatter([shared], broadcast=True, hash=False)
    slots = max(2, 2 * sum(client.nthreads().values()))
    keys: dict[Any, Hashable] = {}

    def submit(batch: Iterable[Item]) -> list[Any]:
        futures = []
        for key, args in batch:
            future = client.submit(fn, remote, *args, pure=False)
            keys[future] = key
            futures.append(future)
        return futures

    queue = as_completed(submit(itertools.islice(items, slots)), loop=client.loop)
    try:
        for future in queue:
            key = keys.pop(future)
            result = future.result()
            del future  # the scheduler forgets a result nobody holds
            yield key, result
            for new in submit(itertools.islice(items, 1)):
                queue.add(new)
    finally:
        for future in list(keys):
            future.cancel()
