"""Scheduling: where the blocks of a prediction run, and how many are in flight at once.

Three ways, chosen by the run's settings (:func:`run_blocks`): threads of this process (Dask's threaded
scheduler; the model runs on the calling thread), an existing Dask distributed cluster (``scheduler``), or a
local cluster of one single-threaded worker process per device of this node (``devices``). Every block is
run by :func:`~rockseg.inference.engine.run_block`, whichever process it lands in.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import dask

from rockseg.devices import malloc_environment
from rockseg.inference.config import PredictConfig
from rockseg.inference.engine import BlockJob, drop_engine, engine_for, run_block
from rockseg.inference.grid import Triple
from rockseg.inference.runner import ModelThread
from rockseg.progress import Reporter


def run_blocks(job: BlockJob, todo: list[Triple], config: PredictConfig, report: Reporter) -> list[tuple[int, str]]:
    """Run the blocks ``todo`` of ``job`` where ``config`` says; each block's (voxels, precision), in any order."""
    if config.devices:
        with _device_cluster(config.devices) as cluster:
            return _run_distributed(job, todo, cluster.scheduler_address, report)
    if config.scheduler:
        return _run_distributed(job, todo, config.scheduler, report)
    try:
        return _run_threads(job, todo, config.workers, report)
    finally:
        drop_engine(job)  # free the model; a distributed worker keeps its own


def _run_threads(job: BlockJob, todo: list[Triple], workers: int, report: Reporter) -> list[tuple[int, str]]:
    """Run blocks with Dask's threaded scheduler, at most ``workers`` in flight, and the model on this thread.

    While one block's tiles run through the model (on this thread: see :class:`ModelThread`), the next block
    is read and decompressed, and the previous one compressed and written, by Dask's threads.
    """
    if not todo:
        return []
    model_thread = ModelThread()
    engine_for(job, model_thread)  # the model is built here, on the thread that runs it

    def run(index: Triple) -> tuple[int, str]:
        result = run_block(job, index)
        report.advance(result[0])
        return result

    def compute() -> list[tuple[int, str]]:
        results: list[tuple[int, str]] = []
        for i in range(0, len(todo), 4096):  # bounded graph size for millions of blocks
            tasks = [dask.delayed(run, pure=False)(b) for b in todo[i : i + 4096]]
            results.extend(dask.compute(*tasks, scheduler="threads", num_workers=workers))
        return results

    return model_thread.serve(compute)


def _run_distributed(job: BlockJob, todo: list[Triple], address: str, report: Reporter) -> list[tuple[int, str]]:
    """Run blocks on an existing Dask distributed cluster, keeping about two blocks per worker thread in flight."""
    from distributed import Client, as_completed

    results: list[tuple[int, str]] = []
    with Client(address, timeout="30s") as client:
        slots = max(2, 2 * sum(client.nthreads().values()))
        pending = iter(todo)
        futures = [client.submit(run_block, job, b, pure=False) for b in itertools.islice(pending, slots)]
        queue = as_completed(futures)
        for future in queue:
            result = future.result()
            results.append(result)
            report.advance(result[0])
            nxt = next(pending, None)
            if nxt is not None:
                queue.add(client.submit(run_block, job, nxt, pure=False))
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

