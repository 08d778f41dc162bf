"""Measure ``rockseg convert``: MB/s and peak memory against a plain copy of the same data on the same disk.

For each input (a raw uint16 volume, the same volume as a folder of TIFF slices, and as a netCDF4 file) it prints:

- the MB/s of a plain copy of the input (``shutil.copyfile``), measured before each convert and once after, with
  the median and the range;
- the MB/s of ``python -m rockseg convert INPUT out.zarr`` run as a subprocess (start-up included), with the peak
  resident memory of that process (``wait4`` rusage ``ru_maxrss``, the figure ``RUSAGE_CHILDREN`` gives for one
  child). A child's ``ru_maxrss`` also counts the memory of its parent at the fork, so the inputs are made in
  another process and this one stays small;
- where the time goes: each stage of the pipeline timed alone on the first planes of the raw input, in MB/s and in
  CPU milliseconds per MB, and the speed that the sum of the CPU costs allows on this machine's cores.

How copy and convert are measured, the same way for both: before each run the file system is synced (so no run
pays for the write-back of an earlier one) and the input is dropped from the page cache
(``posix_fadvise(POSIX_FADV_DONTNEED)`` after an fsync; no root needed), so it is read from the disk. Each run is
timed twice: to the page cache (the command's own time), and until its output is on the disk ("durable": the copy
fsynced, the store flushed with one ``syncfs`` of its file system, which commits the journal once instead of once per
chunk file). The output is then dropped from the page cache too. The load average is printed before and after: on
a shared machine, timings with a load above the number of CPUs are disturbed.

Outputs made of many files (stores, copies of the slice folder) are deleted only at the end: ext4 skips inodes freed
in the last minutes when it allocates new ones, and after thousands of deletions creating a file cost 0.3-0.5 ms of
CPU here (``perf``: ``recently_deleted`` in ``ext4_create``), which would penalise the run after a deletion. The
full run therefore needs about 27 GB of free disk in ``--workdir`` at its peak.

    python benchmarks/convert.py [--workdir /tmp/rockseg-bench] [--size 1024] [--inputs raw,tiff,netcdf]
                                 [--compressors blosc-zstd,lz4] [--shards 64,1024,1024] [--netcdf-size 1024]
                                 [--keep]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEREA = ROOT / ".." / "shared" / "data" / "berea-400" / "berea_pore.tif"
MB = 1e6


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def evict(paths: list[Path]) -> None:
    """Flush files to disk and drop them from the page cache, so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_of(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def fsync_all(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - start


def sync_fs(path: Path) -> float:
    """Seconds to write back every dirty page of the file system holding ``path`` (Linux ``syncfs``; else an fsync
    of each file under ``path``)."""
    start = time.perf_counter()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path if path.is_dir() else path.parent, os.O_RDONLY)
        try:
            if libc.syncfs(fd) != 0:
                raise OSError(ctypes.get_errno(), "syncfs failed")
        finally:
            os.close(fd)
    except (AttributeError, OSError):
        fsync_all(files_of(path))
    return time.perf_counter() - start


def nbytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_of(path))


def cpu_seconds() -> float:
    """CPU seconds of this process, all threads, user and system (nanosecond clock, not the 10 ms tick)."""
    return time.process_time()


def synthetic_planes(size: int, z0: int, z1: int, rng: np.random.Generator, berea: np.ndarray | None) -> np.ndarray:
    """Planes z0:z1 of a CT-like uint16 volume: two phases (pore ~9000, grain ~26000) plus Gaussian noise."""
    if berea is not None:
        n = berea.shape[0]
        phase = berea[np.ix_(np.arange(z0, z1) % n, np.arange(size) % n, np.arange(size) % n)]
    else:
        z, y, x = np.ogrid[z0:z1, :size, :size]
        phase = (np.sin(z / 7.0) + np.sin(y / 5.0) + np.sin(x / 6.0)) > 0.5
    grey = np.where(phase, 9000, 26000).astype(np.float32)
    grey += rng.normal(0, 1500, grey.shape).astype(np.float32)
    return np.clip(grey, 0, 65535).astype(np.uint16)


def make_inputs(work: Path, size: int, inputs: list[str], netcdf_size: int) -> dict[str, tuple[Path, list[str]]]:
    import tifffile

    berea = tifffile.imread(BEREA) if BEREA.exists() else None
    rng = np.random.default_rng(0)
    raw, folder, nc = work / "volume.raw", work / "slices", work / "volume.nc"
    if "tiff" in inputs:
        folder.mkdir(exist_ok=True)
    ds = var = None
    if "netcdf" in inputs:
        import netCDF4

        ds = netCDF4.Dataset(nc, "w", format="NETCDF4")
        for dim in ("z", "y", "x"):
            ds.createDimension(dim, netcdf_size if dim == "z" else size)
        var = ds.createVariable("tomo", "u2", ("z", "y", "x"), chunksizes=(1, size, size), fill_value=False)
        var.set_auto_maskandscale(False)
    with open(raw, "wb") as fh:
        for z0 in range(0, size, 32):
            planes = synthetic_planes(size, z0, min(size, z0 + 32), rng, berea)
            fh.write(planes.tobytes())
            if "tiff" in inputs:
                for i, plane in enumerate(planes):
                    tifffile.imwrite(folder / f"slice{z0 + i}.tif", plane)
            if var is not None and z0 < netcdf_size:
                var[z0 : min(netcdf_size, z0 + 32)] = planes[: netcdf_size - z0]
    if ds is not None:
        ds.close()
    return input_paths(work, size, inputs)


def input_paths(work: Path, size: int, inputs: list[str]) -> dict[str, tuple[Path, list[str]]]:
    """The inputs :func:`make_inputs` writes, with the convert options each needs."""
    made: dict[str, tuple[Path, list[str]]] = {}
    raw, folder, nc = work / "volume.raw", work / "slices", work / "volume.nc"
    shape = f"{size},{size},{size}"
    if "raw" in inputs:
        made["raw"] = (raw, ["--shape", shape, "--dtype", "uint16"])
    if "tiff" in inputs:
        made["tiff"] = (folder, [])
    if "netcdf" in inputs:
        made["netcdf"] = (nc, [])
    return made


def copy_rate(src: Path, work: Path) -> tuple[float, float]:
    """MB/s of copying ``src`` (file or folder) read from the disk: to the page cache, and durable (fsynced)."""
    dest = work / ("copy-" + src.name)
    sync_fs(work)
    evict(files_of(src))
    start = time.perf_counter()
    if src.is_dir():
        dest.mkdir()
        for f in files_of(src):
            shutil.copyfile(f, dest / f.name)
    else:
        shutil.copyfile(src, dest)
    seconds = time.perf_counter() - start
    durable = seconds + fsync_all(files_of(dest))
    evict(files_of(dest))
    if dest.is_dir():  # many files: deleted at the end (see the module docstring)
        dest.rename(work / f"done-{dest.name}-{time.monotonic_ns()}")
    else:
        dest.unlink()
    size = nbytes(src)
    return size / MB / seconds, size / MB / durable


def convert_run(src: Path, options: list[str], dest: Path, compressor: str, work: Path) -> dict[str, float]:
    """Run the real CLI on an evicted input: wall time, peak RSS of that process, the time until the store is on
    the disk, and the seconds the command reported for itself (without Python's start-up)."""
    sync_fs(work)
    evict(files_of(src))
    cmd = [sys.executable, "-m", "rockseg", "convert", str(src), str(dest), "--compressor", compressor, *options]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
    seconds = time.perf_counter() - start
    sync = sync_fs(dest)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"convert failed ({proc.returncode}): {err or out}")
    own = re.search(r"in ([0-9.]+) s \(", out)
    evict(files_of(dest))
    return {"seconds": seconds, "sync": sync, "maxrss": usage.ru_maxrss * 1024, "stored": nbytes(dest),
            "own": float(own.group(1)) if own else float("nan"),
            "cpu": usage.ru_utime + usage.ru_stime}


def breakdown(raw: Path, size: int, compressor: str, work: Path, planes: int = 128) -> list[str]:
    """Each stage of the pipeline on the first ``planes`` planes of the raw input, timed alone in this process:
    lines of MB/s and CPU ms per MB, then the speed the summed CPU cost allows on this machine."""
    import zarr

    from rockseg.io import DEFAULT_CHUNKS_3D, convert, open_source
    from rockseg.io.chunk_encoder import _ChunkFiles, _write_file
    from rockseg.io.intensity import IntensityAccumulator
    from rockseg.io.stores import compressors_for

    planes = min(planes, size)
    chunk = DEFAULT_CHUNKS_3D[0]
    mb = planes * size * size * 2 / MB
    rows: list[tuple[str, float, float]] = []

    def timed(name: str, stage: Callable[[], object]) -> object:
        cpu, start = cpu_seconds(), time.perf_counter()
        result = stage()
        rows.append((name, mb / (time.perf_counter() - start), (cpu_seconds() - cpu) * 1e3 / mb))
        return result

    sync_fs(work)
    evict([raw])
    with open_source(raw, shape=(size, size, size), dtype="uint16") as src:
        slabs = timed("read (from the disk)", lambda: [src.read(z, min(planes, z + chunk))
                                                         for z in range(0, planes, chunk)])
    def cut() -> Iterator[np.ndarray]:
        for slab in slabs:
            for y in range(0, size, chunk):
                for x in range(0, size, chunk):
                    yield np.ascontiguousarray(slab[:, y : y + chunk, x : x + chunk])

    timed("cut into chunks (copies)", lambda: sum(1 for _ in cut()))  # each freed at once, as in the pipeline
    chunks = list(cut())
    stats = IntensityAccumulator(np.dtype(np.uint16), total=size**3)
    timed("statistics (exact histogram)", lambda: [stats.update(c) for c in chunks])
    scratch = zarr.create_array(store=str(work / "scratch.zarr"), shape=(planes, size, size),
                                chunks=DEFAULT_CHUNKS_3D, dtype="uint16", compressors=compressors_for(compressor),
                                overwrite=True)
    encoder = _ChunkFiles.of(scratch, work / "scratch.zarr")._compressor
    encoded = timed("compression (one thread)", lambda: [encoder.encode(c) if encoder is not None else c
                                                          for c in chunks])
    folder = work / "breakdown-chunks"

    def write_files() -> None:
        for i, data in enumerate(encoded):
            if i % 16 == 0:
                (folder / str(i // 16)).mkdir(parents=True)
            _write_file(folder / str(i // 16) / str(i), data)

    timed("writing chunk files (page cache)", write_files)
    timed("write-back to the disk (syncfs)", lambda: sync_fs(folder))
    folder.rename(work / f"done-chunks-{compressor}")
    chunks.clear()  # free the memory before the whole-pipeline runs
    encoded.clear()
    total = sum(cpu for _, _, cpu in rows)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    lines = [f"{name:40s} {rate:6.0f} MB/s  {cpu:5.2f} ms CPU/MB" for name, rate, cpu in rows]
    lines.append(f"{'sum of the stages':40s} {'':11s} {total:5.2f} ms CPU/MB: at most {cpus * 1e3 / total:.0f} MB/s "
                 f"on {cpus} cores")

    store = work / "breakdown.zarr"
    whole = [("the whole pipeline (convert, in-process)",
              lambda: convert(raw, store, shape=(size, size, size), dtype="uint16", slices=f"0:{planes}",
                              compressor=compressor)),
             ("zarr's writer, slabs in memory, no stats",
              lambda: zarr_writes(store, slabs, planes, size, compressor))]
    for name, run in whole:
        sync_fs(work)
        evict([raw])
        rows.clear()
        timed(name, run)
        _, rate, cpu = rows[0]
        lines.append(f"{name:40s} {rate:6.0f} MB/s  {cpu:5.2f} ms CPU/MB (to the page cache)")
        store.rename(work / f"done-{store.name}-{time.monotonic_ns()}")
    return lines


def zarr_writes(store: Path, slabs: list[np.ndarray], planes: int, size: int, compressor: str) -> None:
    import zarr

    from rockseg.io import DEFAULT_CHUNKS_3D
    from rockseg.io.stores import compressors_for

    array = zarr.create_array(store=str(store), shape=(planes, size, size), chunks=DEFAULT_CHUNKS_3D,
                              dtype="uint16", compressors=compressors_for(compressor), fill_value=0,
                              config={"write_empty_chunks": True})
    for i, slab in enumerate(slabs):
        array[i * len(slabs[0]) : i * len(slabs[0]) + len(slab)] = slab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new one in /tmp)")
    parser.add_argument("--size", type=int, default=1024, help="edge of the uint16 cube (1024: 2 GiB)")
    parser.add_argument("--netcdf-size", type=int, default=None, help="planes of the netCDF4 input (default: size)")
    parser.add_argument("--inputs", default="raw,tiff,netcdf")
    parser.add_argument("--compressors", default="blosc-zstd,lz4")
    parser.add_argument("--shards", default="64,1024,1024", help="also convert the raw input with these shards "
                        "(first of --compressors); empty: skip")
    parser.add_argument("--keep", action="store_true", help="keep the inputs and outputs")
    parser.add_argument("--make-inputs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_inputs:  # the child that writes the inputs
        make_inputs(args.workdir, args.size, args.inputs.split(","), args.netcdf_size or args.size)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = args.inputs.split(",")
    compressors = args.compressors.split(",")
    netcdf_size = args.netcdf_size or args.size
    print(f"machine: {os.cpu_count()} CPUs, load average {load()} (timings are disturbed when it exceeds the CPUs)")
    try:
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make-inputs", "--workdir", str(work), "--size", str(args.size),
                        "--inputs", args.inputs, "--netcdf-size", str(netcdf_size)], check=True)
        made = input_paths(work, args.size, inputs)
        print(f"inputs made in {time.perf_counter() - start:.0f} s in {work}: uint16, {args.size}^3 "
              f"(netCDF4: {netcdf_size} planes, chunks of one plane, uncompressed)")
        print("copy and convert alike: file system synced and input dropped from the page cache before each run; "
              "'durable' = until the output is on the disk (copy fsynced, store flushed by syncfs)")
        out = work / f"outputs-{time.strftime('%Y%m%d-%H%M%S')}"  # a workdir kept with --keep can be used again
        out.mkdir()
        for name, (src, options) in made.items():
            size = nbytes(src)
            print(f"\n[{name}] {src.name}: {size / 2**20:.0f} MiB in {len(files_of(src))} file(s)")
            runs = [(f"--compressor {c}", c, options) for c in compressors]
            if name == "raw" and args.shards:
                runs.append((f"--shards {args.shards} --compressor {compressors[0]}", compressors[0],
                             [*options, "--shards", args.shards]))
            copies = [copy_rate(src, out)]
            results = []
            for i, (label, compressor, run_options) in enumerate(runs):  # copies interleaved with the converts
                results.append((label, convert_run(src, run_options, out / f"{name}-{i}.zarr", compressor, out)))
                copies.append(copy_rate(src, out))
            cached = sorted(c for c, _ in copies)
            durable = sorted(d for _, d in copies)
            copy_mb, copy_durable = float(np.median(cached)), float(np.median(durable))
            print(f"  plain copy, median of {len(copies)} taken between the converts: {copy_mb:.0f} MB/s to the page "
                  f"cache ({cached[0]:.0f}-{cached[-1]:.0f}), durable {copy_durable:.0f} MB/s "
                  f"({durable[0]:.0f}-{durable[-1]:.0f})")
            for label, r in results:
                rate = size / MB / r["seconds"]
                synced = size / MB / (r["seconds"] + r["sync"])
                print(f"  convert {label}: {rate:.0f} MB/s ({rate / copy_mb:.0%} of the copy) for the whole command; "
                      f"{size / MB / r['own']:.0f} MB/s as it reports itself (without start-up); durable "
                      f"{synced:.0f} MB/s ({synced / copy_durable:.0%} of the durable copy); peak RSS "
                      f"{r['maxrss'] / 2**20:.0f} MiB; CPU {r['cpu'] * 1e3 / (size / MB):.2f} ms/MB; stored "
                      f"{r['stored'] / size:.0%} of the input [{r['seconds']:.1f} s + {r['sync']:.1f} s syncfs]")
        if "raw" in made:
            for compressor in compressors:
                print(f"\nwhere the time goes ({compressor}, first 128 planes of the raw input, each stage alone; "
                      f"load average {load()}):")
                for line in breakdown(made["raw"][0], args.size, compressor, out):
                    print("  " + line)
        print(f"\nload average at the end: {load()}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
