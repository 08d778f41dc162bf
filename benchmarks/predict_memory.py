"""Peak resident memory of `rockseg predict` with default settings, against the volume size.

Writes uint8 volumes of N^3 (a 128^3 synthetic rock repeated in every 128^3 chunk, so that making them is cheap)
and runs `rockseg predict VOLUME` (the shipped model, default tile, halo, block and workers) as a subprocess,
printing its peak RSS, time and voxels/s. Memory must not grow with the volume.

    python benchmarks/predict_memory.py [--sizes 512,1024] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zarr

from rockseg.io.intensity import intensity_stats
from rockseg.synthetic import synthetic_rock


def peak_rss_mib(cmd: list[str]) -> tuple[float, float, str]:
    """Run cmd in a child; return its peak resident memory (MiB), wall seconds and stdout.

    The peak is the child's own high-water mark (VmHWM), polled while it runs. getrusage's ru_maxrss of a child
    would also count the pages it shared with this process between fork and exec: the benchmark's own memory.
    Output goes to temporary files, so a chatty child cannot fill a pipe while it is polled.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    peak = max([peak] + [int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM")])
            except (OSError, ValueError):  # the child has just ended
                pass
            time.sleep(0.1)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{err.read()}")
        return peak, wall, out.read().strip()


def make_volume(work: Path, n: int) -> tuple[Path, dict]:
    """An N^3 uint8 volume ``work/volN.zarr`` (a 128^3 synthetic rock in every 128^3 chunk; made once) with its
    intensity statistics in its attributes; returns its path and the statistics."""
    rock, _ = synthetic_rock((128, 128, 128), seed=1)
    stats = intensity_stats(rock)
    vol = work / f"vol{n}.zarr"
    if not vol.exists():
        arr = zarr.create_array(store=str(vol), shape=(n, n, n), chunks=(128, 128, 128), dtype="uint8")
        for z, y, x in itertools.product(range(0, n, 128), repeat=3):
            arr[z : z + 128, y : y + 128, x : x + 128] = rock[: n - z, : n - y, : n - x]
        arr.attrs["intensity"] = stats
    return vol, stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    for n in (int(s) for s in args.sizes.split(",")):
        vol, _ = make_volume(work, n)
        rss, wall, out = peak_rss_mib([sys.executable, "-m", "rockseg", "predict", str(vol), "--overwrite"])
        print(f"{n}^3: peak RSS {rss:.0f} MiB, {wall:.0f} s, {n**3 / wall / 1e6:.2f} Mvoxel/s ({out})", flush=True)


if __name__ == "__main__":
    main()
