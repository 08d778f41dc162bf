"""Resume after ``kill -9``: how long the rest of a run takes against a whole run (issue 17).

    python benchmarks/resume.py [--size 256] [--block 64] [--rounds 2] [--arch linear|unet]

A grey volume of SIZE^3 and a small model (``--arch linear``, or a UNet of 4 channels and depth 2; tile 32,
halo 4); per round, interleaved (the machine is shared): a whole ``rockseg predict`` (a subprocess, start-up included), then a run killed with SIGKILL once half
of its shards are recorded, then the same command again (the resume, start-up included). Prints each time and the
ratio resume / whole run, and checks that the resumed labels equal the whole run's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import write_model  # noqa: E402


def _cmd(work: Path, out: Path, block: int) -> list[str]:
    return [sys.executable, "-m", "rockseg", "predict", str(work / "v.zarr"), "-m", str(work / "m.pt"), "-o",
            str(out), "--device", "cpu", "--block", str(block), "--tile", "32", "--halo", "4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arch", default="linear", help="linear (default) or unet (a small one: 4 channels, depth 2)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rockseg-resume-"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        data = np.random.default_rng(0).integers(0, 255, (args.size,) * 3, dtype=np.uint8)
        arr = zarr.create_array(store=str(work / "v.zarr"), shape=data.shape, chunks=(64, 64, 64), dtype="uint8")
        arr[...] = data
        arr.attrs["intensity"] = {"p_low": 0.0, "p_high": 255.0}
        write_model(work / "m.pt", args.arch, base=4, tile=32, halo=4, stats={"p_low": 0.0, "p_high": 255.0}, depth=2)
        units = -(-args.size // args.block) ** 3
        for r in range(args.rounds):
            for out in (work / "full.zarr", work / "killed.zarr"):
                shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            subprocess.run(_cmd(work, work / "full.zarr", args.block), env=env, check=True, capture_output=True)
            full = time.perf_counter() - start
            start = time.perf_counter()
            proc = subprocess.Popen(_cmd(work, work / "killed.zarr", args.block), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            records = work / "killed.zarr" / ".rockseg" / "records" / "all"
            while proc.poll() is None:
                if records.exists() and records.read_text().count("\n") >= units // 2:
                    break
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            first = time.perf_counter() - start
            done = records.read_text().count("\n")
            start = time.perf_counter()
            subprocess.run(_cmd(work, work / "killed.zarr", args.block), env=env, check=True, capture_output=True)
            resume = time.perf_counter() - start
            same = np.array_equal(zarr.open_array(str(work / "full.zarr"))[...],
                                  zarr.open_array(str(work / "killed.zarr"))[...])
            print(f"round {r}: whole run {full:.2f} s; killed after {done}/{units} shards at {first:.2f} s; resume "
                  f"{resume:.2f} s = {resume / full:.0%} of a whole run; labels identical: {same}; load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
