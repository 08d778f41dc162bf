"""Peak resident memory of `rockseg predict` with default settings, against the volume size.

Writes uint8 volumes of N^3 (a 128^3 synthetic rock repeated in every 128^3 chunk, so that making them is cheap)
and runs `rockseg predict VOLUME` (the shipped model, default tile, halo, block and workers) as a subprocess,
printing its peak RSS, time and voxels/s. Memory must not grow with the volume.

    python benchmarks/predict_memory.py [--sizes 512,1024] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zarr

from rockseg.normalization import intensity_stats
from rockseg.synthetic import synthetic_rock


def peak_rss_mib(cmd: list[str]) -> tuple[float, float, str]:
    """Run cmd in a child; return its peak RSS (MiB, from wait4), wall seconds and stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return usage.ru_maxrss / 1024, wall, out.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    rock, _ = synthetic_rock((128, 128, 128), seed=1)
    stats = intensity_stats(rock)
    for n in (int(s) for s in args.sizes.split(",")):
        vol = work / f"vol{n}.zarr"
        if not vol.exists():
            arr = zarr.create_array(store=str(vol), shape=(n, n, n), chunks=(128, 128, 128), dtype="uint8")
            for z, y, x in itertools.product(range(0, n, 128), repeat=3):
                arr[z : z + 128, y : y + 128, x : x + 128] = rock[: n - z, : n - y, : n - x]
            arr.attrs["intensity"] = stats
        rss, wall, out = peak_rss_mib([sys.executable, "-m", "rockseg", "predict", str(vol), "--overwrite"])
        print(f"{n}^3: peak RSS {rss:.0f} MiB, {wall:.0f} s, {n**3 / wall / 1e6:.2f} Mvoxel/s ({out})", flush=True)


if __name__ == "__main__":
    main()
