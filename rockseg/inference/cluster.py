"""Running many small tasks in bounded batches, on threads of this process or a Dask distributed cluster; no torch.

:func:`connect` reaches a scheduler (or fails within :data:`CONNECT_TIMEOUT` with one line: exit code 2) and
:func:`map_batches` runs a function over a long list of items (shard files to copy, shards to fuse) with only a
bounded number of tasks in flight: never one graph of a million tasks, whatever the volume.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from rockseg.errors import InputError

CONNECT_TIMEOUT = 10.0  # seconds to wait for a Dask scheduler before giving up
_T = TypeVar("_T")
_R = TypeVar("_R")


def connect(address: str, *, timeout: float | None = None) -> Any:
    """A Dask distributed client of the scheduler at ``address``; :class:`InputError` if none answers within
    ``timeout`` seconds (default :data:`CONNECT_TIMEOUT`)."""
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler needs Dask distributed: pip install 'rockseg[distributed]'") from None
    try:
        return Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise InputError(
            f"--scheduler {address}: no Dask scheduler answered within {timeout:g} s ({reason}): check the address "
            f"(tcp://HOST:PORT) and that the scheduler is running"
        ) from None


def run_batch(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """Run ``fn`` on each item of one batch, in order (one task of :func:`map_batches`)."""
    return [fn(item) for item in items]


def map_batches(
    fn: Callable[[_T], _R], items: Iterable[_T], *, batch: int = 1, workers: int = 2, client: Any = None,
    done: Callable[[list[_R]], None] | None = None,
) -> None:
    """Run ``fn`` on every item, ``batch`` items per task, at most about two tasks per thread in flight.

    ``client``: a Dask distributed client (``fn`` and the items must pickle); ``None``: ``workers`` threads of
    this process. ``done`` gets each batch's results, in this process, as batches finish (in any order). The
    first error stops the run and is raised.
    """
    batches = iter(lambda it=iter(items): list(itertools.islice(it, batch)), [])
    if client is not None:
        _map_distributed(fn, batches, client, done)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="rockseg-task") as pool:
        running = {pool.submit(run_batch, fn, b) for b in itertools.islice(batches, 2 * workers)}
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    if done is not None:
                        done(result)
                    for b in itertools.islice(batches, 1):
                        running.add(pool.submit(run_batch, fn, b))
        except BaseException:
            for future in running:
                future.cancel()
            raise


def _map_distributed(fn: Callable[[_T], _R], batches: Iterable[list[_T]], client: Any,
                     done: Callable[[list[_R]], None] | None) -> None:
    from distributed import as_completed

    slots = max(2, 2 * sum(client.nthreads().values()))
    queue = as_completed([client.submit(run_batch, fn, b, pure=False) for b in itertools.islice(batches, slots)])
    for future in queue:
        result = future.result()
        if done is not None:
            done(result)
        for b in itertools.islice(batches, 1):
            queue.add(client.submit(run_batch, fn, b, pure=False))
