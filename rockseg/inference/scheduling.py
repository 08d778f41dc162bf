"""Scheduling: where the blocks of a prediction run, and how many are in flight at once.

The unit of work is one shard of the prediction (:mod:`.store`): its blocks are written by one process, and it
is recorded as done, by this process alone, once they all are. Three ways, chosen by the run's settings
(:func:`run_blocks`): threads of this process (a bounded pool taking blocks in unit order; the model runs on the
calling thread), an existing Dask distributed cluster (``scheduler``: one task per unit, a bounded number in
flight), or a local cluster of one single-threaded worker process per device of this node (``devices``). Every
block is run by :func:`~rockseg.inference.engine.run_block`, whichever process it lands in.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from rockseg.cluster import connect, run_bounded
from rockseg.devices import malloc_environment
from rockseg.inference.config import PredictConfig
from rockseg.inference.engine import BlockJob, drop_engine, engine_for, run_block, seal_unit
from rockseg.inference.grid import Triple
from rockseg.inference.runner import ModelThread
from rockseg.progress import Reporter


Unit = tuple[Triple, list[Triple]]  # a unit of work (a shard) and its blocks


def run_blocks(job: BlockJob, todo: Iterable[Unit], config: PredictConfig, report: Reporter,
               record: Callable[..., None]) -> list[tuple[int, str]]:
    """Run the units ``todo`` of ``job`` where ``config`` says; each block's (voxels, precision), in any order.

    ``todo`` is drawn as work frees up (so that units can be claimed just before they run). ``record(unit,
    **fields)`` is called once all the blocks of a unit are written and flushed to disk by the process that wrote
    them (``fields``: the checksums of :func:`~.durable.seal`), in this process (a distributed worker returns
    first), so that the run's completion records have one writer.
    """
    if config.devices:
        with _device_cluster(config.devices) as cluster:
            return _run_distributed(job, todo, cluster.scheduler_address, report, record)
    if config.scheduler:
        return _run_distributed(job, todo, config.scheduler, report, record)
    try:
        return _run_threads(job, todo, config.workers, report, record)
    finally:
        drop_engine(job)  # free the model; a distributed worker keeps its own


def _run_threads(job: BlockJob, todo: Iterable[Unit], workers: int, report: Reporter,
                 record: Callable[..., None]) -> list[tuple[int, str]]:
    """Run blocks on ``workers`` threads of this process, in unit order, with the model on this thread.

    While one block's tiles run through the model (on this thread: see :class:`ModelThread`), the next block
    is read and decompressed, and the previous one compressed and written, by the other threads. Blocks are
    taken in order, at most ``workers`` at once, so at most ``workers`` units are ever partly written; a unit is
    recorded when its last block is written.
    """
    todo = iter(todo)
    first = next(todo, None)
    if first is None:
        return []
    todo = itertools.chain([first], todo)
    model_thread = ModelThread()
    engine_for(job, model_thread)  # the model is built here, on the thread that runs it
    left: dict[Triple, int] = {}
    lock = threading.Lock()

    def run(unit: Triple, index: Triple) -> tuple[int, str]:
        result = run_block(job, index)
        with lock:
            left[unit] -= 1
            finished = left[unit] == 0
        if finished:
            record(unit, **seal_unit(job, unit))
        report.advance(result[0])
        return result

    def compute() -> list[tuple[int, str]]:
        def tasks() -> Iterator[tuple[tuple[Triple, Triple], tuple[Triple, Triple]]]:
            for unit, blocks in todo:
                with lock:
                    left[unit] = len(blocks)
                yield from (((unit, b), (unit, b)) for b in blocks)

        return [r for _, r in run_bounded(lambda _, unit, index: run(unit, index), None, tasks(), workers=workers)]

    return model_thread.serve(compute)


def run_unit(job: BlockJob, unit: Triple, blocks: list[Triple]) -> tuple[list[tuple[int, str]], dict[str, Any]]:
    """Run the blocks of one unit one after another (a task of a distributed worker: one writer per shard), then
    flush it to disk; the blocks' results and the fields of its completion record."""
    results = [run_block(job, b) for b in blocks]
    return results, seal_unit(job, unit)


def _run_distributed(job: BlockJob, todo: Iterable[Unit], address: str, report: Reporter,
                     record: Callable[..., None]) -> list[tuple[int, str]]:
    """Run units on a Dask distributed cluster, one task per unit, about two per worker thread in flight."""
    results: list[tuple[int, str]] = []
    with connect(address) as client:
        tasks = ((unit, (unit, blocks)) for unit, blocks in todo)
        for unit, (done, fields) in run_bounded(run_unit, job, tasks, client=client):
            record(unit, **fields)
            results.extend(done)
            report.advance(sum(n for n, _ in done))
    return results


def _device_cluster(devices: Sequence[str]) -> Any:
    """A local Dask cluster with one single-threaded worker process per device.

    A worker for ``cuda:N`` sees only that GPU (``CUDA_VISIBLE_DEVICES=N``), so every worker uses ``cuda``.
    """
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {}
    for i, dev in enumerate(devices):
        env = {"CUDA_VISIBLE_DEVICES": dev.partition(":")[2] or "0"} if dev.startswith("cuda") else {}
        env.update(malloc_environment())  # what tune_malloc() does in this process
        workers[f"device-{i}"] = {"cls": Nanny, "options": {"nthreads": 1, "env": env}}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})

