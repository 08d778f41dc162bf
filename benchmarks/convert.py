"""Measure ``rockseg convert``: MB/s and peak memory against a plain copy of the same data on the same disk.

For each input (a raw uint16 volume, the same volume as a folder of TIFF slices, and as a netCDF4 file) it prints:

- the MB/s of a plain copy of the input (``shutil.copyfile``), with the input evicted from the page cache first, and
  the same copy including an fsync of the copy;
- the MB/s of ``python -m rockseg convert INPUT out.zarr`` run as a subprocess on the evicted input, with the peak
  resident memory of that process (``wait4`` rusage ``ru_maxrss``, the figure ``RUSAGE_CHILDREN`` gives for one
  child), and the MB/s including an fsync of every file of the store. A child's ``ru_maxrss`` also counts the
  memory of its parent at the fork, so the inputs are made in another process and this one stays small;
- where the time goes: reading, statistics, compression and writing of the first slabs, each timed on its own in
  this process (one thread, except compression, which is also timed with zarr's thread pool).

The machine's load average is printed before and after: on a shared machine, timings with a load above the number
of CPUs are disturbed. Page-cache eviction uses ``posix_fadvise(DONTNEED)`` after an fsync of the input (no root
needed); outputs are left in the page cache unless the "with fsync" figure is read.

    python benchmarks/convert.py [--workdir /tmp/rockseg-bench] [--size 1024] [--inputs raw,tiff,netcdf]
                                 [--compressors blosc-zstd,lz4] [--netcdf-size 1024] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


def nbytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_of(path))


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
    """MB/s of copying ``src`` (file or folder) from an evicted page cache, without and with fsync of the copy."""
    evict(files_of(src))
    dest = work / ("copy-" + src.name)
    start = time.perf_counter()
    if src.is_dir():
        dest.mkdir()
        for f in files_of(src):
            shutil.copyfile(f, dest / f.name)
    else:
        shutil.copyfile(src, dest)
    seconds = time.perf_counter() - start
    synced = seconds + fsync_all(files_of(dest))
    shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    size = nbytes(src)
    return size / MB / seconds, size / MB / synced


def convert_run(src: Path, options: list[str], dest: Path, compressor: str) -> dict[str, float]:
    """Run the real CLI on an evicted input; wall time, peak RSS of that process, and the store's fsync time."""
    evict(files_of(src))
    cmd = [sys.executable, "-m", "rockseg", "convert", str(src), str(dest), "--compressor", compressor, *options]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"convert failed ({proc.returncode}): {err or out}")
    sync = fsync_all(files_of(dest))
    return {"seconds": seconds, "sync": sync, "maxrss": usage.ru_maxrss * 1024, "stored": nbytes(dest)}


def breakdown(raw: Path, size: int, compressor: str, work: Path, planes: int = 128) -> str:
    """Seconds per stage for the first ``planes`` planes of the raw input, each stage timed alone."""
    import zarr

    from rockseg.formats import DEFAULT_CHUNKS_3D, open_source
    from rockseg.normalization import IntensityAccumulator
    from rockseg.stores import compressors_for

    planes = min(planes, size)
    chunk = DEFAULT_CHUNKS_3D[0]
    evict([raw])
    times: dict[str, float] = {}
    with open_source(raw, shape=(size, size, size), dtype="uint16") as src:
        start = time.perf_counter()
        slabs = [src.read(z, min(planes, z + chunk)) for z in range(0, planes, chunk)]
        times["read (disk, evicted)"] = time.perf_counter() - start
    stats = IntensityAccumulator(np.dtype(np.uint16), total=size**3)
    start = time.perf_counter()
    for slab in slabs:
        stats.update(slab)
    times["statistics (exact histogram)"] = time.perf_counter() - start
    codecs = compressors_for(compressor)
    blosc = None
    if codecs:
        import numcodecs.blosc
        from numcodecs import Blosc, Zstd

        numcodecs.blosc.use_threads = False  # one thread: the figure per core

        codec = codecs[0]
        if type(codec).__name__ == "BloscCodec":
            blosc = Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=Blosc.BITSHUFFLE, typesize=2)
        else:
            blosc = Zstd(level=codec.level)
    encoded: list[bytes] = []
    start = time.perf_counter()
    for slab in slabs:
        for y in range(0, size, chunk):
            for x in range(0, size, chunk):
                block = np.ascontiguousarray(slab[:, y : y + chunk, x : x + chunk])
                encoded.append(bytes(blosc.encode(block)) if blosc is not None else block.tobytes())
    times["compression (one thread)"] = time.perf_counter() - start
    folder = work / "breakdown-chunks"
    folder.mkdir(exist_ok=True)
    start = time.perf_counter()
    for i, data in enumerate(encoded):
        (folder / str(i)).write_bytes(data)
    times["writing chunk files (page cache)"] = time.perf_counter() - start
    shutil.rmtree(folder)
    store = work / "breakdown.zarr"
    array = zarr.create_array(store=str(store), shape=(planes, size, size), chunks=DEFAULT_CHUNKS_3D,
                              dtype="uint16", compressors=codecs, fill_value=0, config={"write_empty_chunks": True})
    start = time.perf_counter()
    for i, slab in enumerate(slabs):
        array[i * chunk : i * chunk + len(slab)] = slab
    times["zarr compress+write (its thread pool)"] = time.perf_counter() - start
    shutil.rmtree(store)
    mb = planes * size * size * 2 / MB
    return "; ".join(f"{name} {mb / t:.0f} MB/s" for name, t in times.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new one in /tmp)")
    parser.add_argument("--size", type=int, default=1024, help="edge of the uint16 cube (1024: 2 GiB)")
    parser.add_argument("--netcdf-size", type=int, default=None, help="planes of the netCDF4 input (default: size)")
    parser.add_argument("--inputs", default="raw,tiff,netcdf")
    parser.add_argument("--compressors", default="blosc-zstd,lz4")
    parser.add_argument("--shards", default="64,1024,1024", help="also convert the raw input with these shards "
                        "(default compressor); empty: skip")
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
        for name, (src, options) in made.items():
            size = nbytes(src)
            copy_mb, copy_sync_mb = copy_rate(src, work)
            print(f"\n[{name}] {src.name}: {size / 2**20:.0f} MiB in {len(files_of(src))} file(s)")
            print(f"  plain copy (input evicted from the page cache, copy left in it): {copy_mb:.0f} MB/s; "
                  f"including fsync of the copy: {copy_sync_mb:.0f} MB/s")
            runs = [(f"--compressor {c}", c, options) for c in compressors]
            if name == "raw" and args.shards:
                runs.append((f"--shards {args.shards}", "blosc-zstd", [*options, "--shards", args.shards]))
            for i, (label, compressor, run_options) in enumerate(runs):
                dest = work / f"{name}-{i}.zarr"
                r = convert_run(src, run_options, dest, compressor)
                rate = size / MB / r["seconds"]
                synced = size / MB / (r["seconds"] + r["sync"])
                print(f"  convert {label}: {rate:.0f} MB/s ({rate / copy_mb:.0%} of the copy), "
                      f"including fsync of the store {synced:.0f} MB/s ({synced / copy_sync_mb:.0%}); peak RSS "
                      f"{r['maxrss'] / 2**20:.0f} MiB; stored {r['stored'] / size:.0%} of the input "
                      f"[{r['seconds']:.1f} s + {r['sync']:.1f} s fsync]")
                shutil.rmtree(dest)
        if "raw" in made:
            for compressor in compressors:
                print(f"\nwhere the time goes ({compressor}, first 128 planes of the raw input, each stage alone): "
                      f"{breakdown(made['raw'][0], args.size, compressor, work)}")
        print(f"\nload average at the end: {load()}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
