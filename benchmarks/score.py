"""Measure ``rockseg score``: time per voxel and peak memory on one node's threads and on a Dask LocalCluster, the
chunks decoded per chunk owned (before: blocks read with a one-voxel halo; now: each block exactly its own), and
the numbers against NumPy + scikit-image in memory on a smaller pair (they must be equal).

    python benchmarks/score.py [--workdir DIR] [--size 1024] [--small 512] [--repeat 2] [--shards 512]
                               [--before-src DIR]

The label volumes (uint8, 4 phases, chunks of 128^3; the large pair in shards with ``--shards``, as ``rockseg
predict`` writes them) are made chunk by chunk straight into Zarr with bounded memory, and kept in the work folder so that a re-run does not make them again. The truth is a smooth
three-phase-boundary field (sums of sines, like a gyroid) cut into 4 phases; the prediction is the same field
perturbed by a finer wave, with 0.5 % of the voxels set to a random phase.

Every ``rockseg score A B --json`` runs in its own child process, under a small wrapper that reports the child's
peak resident set (``getrusage(RUSAGE_CHILDREN)``). The runs are interleaved (threads, cluster, and the older
source tree given by ``--before-src``, in turn, ``--repeat`` times) so that other work on the machine disturbs
them alike; the cluster has two worker processes of one thread each (as many threads as the local run's default
on a 2-core machine), and its workers' peak memory is reported apart from the client's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from rockseg.io.stores import compressors_for

CHUNK = 128
THRESHOLDS = (-1.0, 0.2, 1.1)  # cut the field into 4 phases of about 18, 33, 27, 22 %
LIMIT_GIB = 1.5


def labels_block(lo: tuple[int, ...], hi: tuple[int, ...], perturbed: bool) -> np.ndarray:
    """Labels of the region [lo, hi) of the synthetic pair: the same values whatever the chunking."""
    z, y, x = (np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    # Three 2D terms broadcast to 3D: a smooth, connected, gyroid-like field at the cost of two additions.
    field = np.sin(x / 9.1 + np.sin(y / 13.0)) + np.sin(y / 7.3 + np.sin(z / 11.0))
    field = field + np.sin(z / 8.7 + np.sin(x / 17.0))
    if perturbed:
        field += 0.3 * np.sin(x / 3.1 + y / 4.3) * np.cos(z / 5.3)
    labels = np.digitize(field, THRESHOLDS).astype(np.uint8)
    if perturbed:
        rng = np.random.default_rng(list(lo))
        flip = rng.random(labels.shape, dtype=np.float32) < 0.005
        labels[flip] = rng.integers(0, 4, size=int(flip.sum()), dtype=np.uint8)
    return labels


def make_volume(path: Path, size: int, perturbed: bool, shards: int = 0) -> float:
    """Write (or keep, if complete) a size^3 label store chunk by chunk; return the seconds spent.

    With ``shards`` the store is sharded (shards of that edge, chunks of CHUNK^3 inside), written shard by shard:
    a shard's labels are made chunk by chunk into one buffer, then written once.
    """
    if path.exists() and zarr.open_array(str(path), mode="r").attrs.get("complete"):
        return 0.0
    start = time.perf_counter()
    step = shards or CHUNK
    array = zarr.create_array(
        store=str(path), shape=(size,) * 3, chunks=(CHUNK,) * 3, shards=(shards,) * 3 if shards else None,
        dtype="uint8", compressors=compressors_for(), overwrite=True,
    )

    def write(corner: tuple[int, ...]) -> None:
        hi = tuple(min(c + step, size) for c in corner)
        out = np.empty(tuple(b - a for a, b in zip(corner, hi)), np.uint8)
        for inner in itertools.product(*(range(a, b, CHUNK) for a, b in zip(corner, hi))):
            top = tuple(min(c + CHUNK, b) for c, b in zip(inner, hi))
            out[tuple(slice(c - a, t - a) for c, t, a in zip(inner, top, corner))] = labels_block(inner, top, perturbed)
        array[tuple(slice(a, b) for a, b in zip(corner, hi))] = out

    corners = list(itertools.product(range(0, size, step), repeat=3))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(write, corners))  # one chunk (or shard) per task: memory stays a few of them
    array.attrs["complete"] = True
    return time.perf_counter() - start


# Runs a command and prints its peak resident set (KiB) and CPU seconds as the last line of stderr.
_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
         "print(u.ru_maxrss, u.ru_utime + u.ru_stime, file=sys.stderr); sys.exit(r.returncode)")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rockseg_score(*args: object, src: Path | None = None) -> tuple[float, float, float, dict]:
    """Seconds, CPU seconds, peak resident GiB and document of ``rockseg score ARGS --json`` (from ``src``)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "rockseg", "score", *map(str, args),
                           "--json"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"rockseg score failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    peak_kib, cpu = proc.stderr.strip().splitlines()[-1].split()
    return seconds, float(cpu), int(peak_kib) / 2**20, json.loads(proc.stdout)


class CountingStore:
    """Factory of a Zarr store that counts the reads of chunk keys (inner chunks of a shard by byte range)."""

    @staticmethod
    def open(path: Path) -> tuple[zarr.Array, dict]:
        from zarr.storage import LocalStore, WrapperStore

        reads: dict = {}

        class Counting(WrapperStore):
            async def get(self, key, prototype, byte_range=None):  # type: ignore[override]
                if key.startswith("c/") and "Suffix" not in repr(byte_range):  # not a shard's index
                    reads[(key, repr(byte_range))] = reads.get((key, repr(byte_range)), 0) + 1
                return await self._store.get(key, prototype, byte_range)

        return zarr.open_array(store=Counting(LocalStore(str(path), read_only=True)), mode="r"), reads


def decode_counts(pred_path: Path, truth_path: Path) -> tuple[float, float, int, tuple[int, int]]:
    """Chunk reads per chunk owned: the blocks of the default grid read with a one-voxel lower halo (as before),
    then a whole score now; the number of chunks; the most bytes of faces (and pieces) the caller held at once."""
    from rockseg.metrics import score as score_module
    from rockseg.metrics import score_volumes
    from rockseg.metrics.blockwise import block_grid, chunks_of, grow_block

    pred, reads = CountingStore.open(pred_path)
    block = grow_block(chunks_of(pred, 3), pred.shape)
    for lo, hi in block_grid(pred.shape, (0, 0, 0), block):  # what the previous version read, block by block
        pred[tuple(slice(max(a - 1, 0), b) for a, b in zip(lo, hi))]
    before = sum(reads.values())
    owned = len(reads)
    pred, reads = CountingStore.open(pred_path)
    counters = []

    class Recording(score_module.SeamCounter):  # the caller's counter: how much of the faces it holds
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            counters.append(self)

    score_module.SeamCounter = Recording
    try:
        score_volumes(pred, zarr.open_array(str(truth_path), mode="r"))
    finally:
        score_module.SeamCounter = Recording.__mro__[1]
    held = (max(c.peak_bytes for c in counters), max(c.peak_pieces for c in counters))
    return before / owned, sum(reads.values()) / owned, owned, held


def interleaved(pred: Path, truth: Path, repeat: int, before_src: Path | None) -> None:
    """Threads, LocalCluster (and the older source tree) in turn: seconds, CPU seconds (the workers' included),
    ns/voxel, peak memory, same numbers. CPU time is less disturbed than wall time by other work on the machine."""
    import distributed

    voxels = 2 * zarr.open_array(str(pred), mode="r").size  # both volumes are read
    runs: dict[str, list[tuple[float, float, float]]] = {}
    docs: dict[str, dict] = {}
    with (distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
          distributed.Client(cluster) as client):
        ways = {"threads (2)": (), "LocalCluster (2 x 1)": ("--scheduler", cluster.scheduler_address)}
        if before_src is not None:
            ways[f"before ({before_src.name}, threads)"] = ()
        for _ in range(repeat):
            for way, extra in ways.items():
                src = before_src if way.startswith("before") else None
                workers_cpu = sum(client.run(_cpu_seconds).values())
                seconds, cpu, peak, doc = rockseg_score(pred, truth, *extra, src=src)
                cpu += sum(client.run(_cpu_seconds).values()) - workers_cpu  # idle workers count little
                runs.setdefault(way, []).append((seconds, cpu, peak))
                docs[way] = doc
        workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    first = docs["threads (2)"]
    for way, values in runs.items():
        seconds = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        peak = max(v[2] for v in values)
        note = "" if way.startswith("before") or docs[way] == first else "; DOCUMENT DIFFERS from the threads run"
        if way.startswith("LocalCluster"):
            note += f"; workers' peak {max(workers.values()) / 2**20:.2f} GiB each"
        if way.startswith("threads"):
            note += f" ({'under' if peak < LIMIT_GIB else 'OVER'} the {LIMIT_GIB} GiB limit)"
        print(f"  {way:<28} wall {seconds:5.1f} s ({', '.join(f'{v[0]:.1f}' for v in values)}) = "
              f"{seconds / voxels * 1e9:5.1f} ns/voxel; CPU {cpu:5.1f} s ({', '.join(f'{v[1]:.1f}' for v in values)}) = "
              f"{cpu / voxels * 1e9:5.1f} ns/voxel; client peak {peak:.2f} GiB{note}")
    if before_src is not None:
        same = docs[next(w for w in docs if w.startswith("before"))] == first
        print(f"  medians of {repeat} runs; documents of before and now: {'equal' if same else 'DIFFERENT'}")


def reference(pred_path: Path, truth_path: Path) -> tuple[float, float, dict]:
    """NumPy + scikit-image on the whole arrays in memory: load seconds, compute seconds, numbers."""
    from skimage.measure import euler_number

    start = time.perf_counter()
    pred = zarr.open_array(str(pred_path), mode="r")[...]
    truth = zarr.open_array(str(truth_path), mode="r")[...]
    loaded = time.perf_counter()
    k = int(max(pred.max(), truth.max())) + 1
    confusion = np.bincount((truth.astype(np.int64) * k + pred).ravel(), minlength=k * k).reshape(k, k)
    euler = {(label, which): int(euler_number(volume == label, connectivity=3))
             for label in range(k) for which, volume in (("pred", pred), ("true", truth))}
    done = time.perf_counter()
    return loaded - start, done - loaded, {"confusion": confusion.tolist(), "euler": euler}


def same_numbers(doc: dict, ref: dict) -> bool:
    labels = [p["label"] for p in doc["phases"]]
    if labels != list(range(len(ref["confusion"]))) or doc["confusion"] != ref["confusion"]:
        return False
    return all(p["euler_pred"] == ref["euler"][(p["label"], "pred")]
               and p["euler_true"] == ref["euler"][(p["label"], "true")] for p in doc["phases"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="folder to keep the label volumes in")
    parser.add_argument("--size", type=int, default=1024, help="edge of the large pair (memory, time, decodes)")
    parser.add_argument("--small", type=int, default=512, help="edge of the pair compared with scikit-image")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs of each way")
    parser.add_argument("--shards", type=int, default=0,
                        help="write the large pair sharded, shards of this edge (a multiple of 128; default: not)")
    parser.add_argument("--before-src", type=Path, default=None,
                        help="source tree of an older rockseg to time in turn (e.g. a 'git archive' of main)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-score-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at the start; work in {work}")

    pairs = []  # the large pair (sharded with --shards), then the small one
    for size, shards in ((args.size, args.shards), (args.small, 0)):
        tag = f"-s{shards}" if shards else ""
        pred, truth = work / f"pred-{size}{tag}.zarr", work / f"truth-{size}{tag}.zarr"
        seconds = make_volume(truth, size, False, shards) + make_volume(pred, size, True, shards)
        made = f"made in {seconds:.0f} s" if seconds else "kept from an earlier run"
        layout = f"chunks {CHUNK}^3" + (f" in shards of {shards}^3" if shards else "")
        print(f"{size}^3 pair (uint8, 4 phases, {layout}): {made}")
        pairs.append((pred, truth))
    large, small = pairs

    before, now, owned, (held, pieces) = decode_counts(*large)
    print(f"{args.size}^3 prediction, {owned} chunks: chunks decoded per chunk owned {before:.2f} before (blocks "
          f"read with a one-voxel halo, emulated on the same block grid), {now:.2f} now; the caller held at most "
          f"{held / 2**20:.2f} MiB of faces (compressed) for {pieces} seams waiting")
    print(f"{args.size}^3 pair, rockseg score A B --json, interleaved (load average {os.getloadavg()[0]:.2f}):")
    interleaved(*large, args.repeat, args.before_src)

    seconds, _, _, doc = rockseg_score(*small)
    sliced, _, _, _ = rockseg_score(*small, "--per-slice", "z")
    load, compute, ref = reference(*small)
    print(f"{args.small}^3 pair: rockseg score {seconds:.1f} s (whole command: start-up, reading and decompressing "
          f"included; {sliced:.1f} s with --per-slice z)")
    print(f"{args.small}^3 pair: NumPy + scikit-image in memory {compute:.1f} s (+ {load:.1f} s to load the arrays); "
          f"rockseg / reference = {seconds / compute:.2f}; numbers "
          f"{'equal' if same_numbers(doc, ref) else 'DIFFERENT'} (confusion matrix and 8 Euler numbers)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other work on the machine disturbs the timings)")


if __name__ == "__main__":
    main()
