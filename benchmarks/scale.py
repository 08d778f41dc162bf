"""Terabyte scale: predict, stitch and score in bounded memory, few files, statistics once (issue 16).

Prints three cases; each step runs as its own ``rockseg`` (or Python) subprocess, whose peak resident memory is
its own high-water mark (VmHWM, polled while it runs):

1. ``--sizes 1024,2048``: a uint8 volume of N^3 generated straight into Zarr (a cheap pattern, chunk by chunk),
   then ``predict`` with a near-free model, ``stitch`` and ``score`` (the stitched labels against the prediction):
   seconds, ns per voxel, peak RSS and files written per step, and the ratios of the largest size to the
   smallest (targets: RSS <= 2 GiB and within 10 %, time per voxel within 15 %).
2. ``--dry 10000``: an empty N^3 store (fill value only) and a prediction of it whose every shard is recorded
   done by the 1,000 parts of a job array: time and RSS of one ``predict --part 7/1000`` task (nothing left to
   do), of stitch's completeness check, and the file count of the complete output (shard files + completion
   records; target <= 20,000).
3. ``--wide 8192``: statistics of a 64 x W x W uint16 volume without an ``intensity`` attribute (chunks of
   16 x 512 x 512) by a ``predict --crop`` of 64^3 (target <= 1 GiB), then a second predict task reusing them.

    python benchmarks/scale.py                                   # the issue's sizes (hours, ~60 GB of disk)
    python benchmarks/scale.py --sizes 256,512 --dry 2000 --wide 1024   # a few minutes
    python benchmarks/scale.py --cases 2                         # only case 2

The near-free model is ``--arch linear`` (a 1x1x1 classifier, :func:`near_free_model`), so the figures are
those of the engine, the stores and the file system, not of a network.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

from predict_memory import peak_rss_mib  # benchmarks/ is on the path when run as a script

ROCKSEG = [sys.executable, "-m", "rockseg"]


def count_files(*paths: Path) -> int:
    return sum(len(files) for p in paths if p.exists() for _, _, files in os.walk(p))


def near_free_model(path: Path) -> Path:
    """A model file whose network costs next to nothing per voxel: ``--arch linear``, a 1x1x1 classifier."""
    import torch

    from rockseg.models import build_model, save_model_file

    torch.manual_seed(0)
    args = {"spatial_dims": 3, "classes": 2}
    save_model_file(path, build_model("linear", **args).eval(), arch="linear", arch_args=args, spatial_dims=3,
                    in_channels=1, phases={0: "pore", 1: "solid"}, normalization={"p_low": 0.0, "p_high": 255.0},
                    tile=96, halo=8)
    return path


def pattern_volume(path: Path, n: int, *, chunk: int = 128) -> None:
    """An N^3 uint8 volume written chunk by chunk (one 128^3 pattern, shifted per chunk), with its statistics."""
    if path.exists():
        return
    z, y, x = np.ogrid[:chunk, :chunk, :chunk]
    base = ((np.sin(z / 7.0) + np.cos(y / 5.0) * np.sin(x / 9.0)) * 60 + 128).astype(np.uint8)
    arr = zarr.create_array(store=str(path), shape=(n, n, n), chunks=(chunk,) * 3, dtype="uint8")
    for i, (cz, cy, cx) in enumerate(itertools.product(range(0, n, chunk), repeat=3)):
        block = np.roll(base, i % 17, axis=2)
        arr[cz : cz + chunk, cy : cy + chunk, cx : cx + chunk] = block[: n - cz, : n - cy, : n - cx]
    arr.attrs["intensity"] = {"p_low": 8.0, "p_high": 248.0}


# ---------------------------------------------------------------------------------------------------- case 1
def case_pipeline(work: Path, sizes: list[int], model: Path) -> None:
    print("## 1. predict, stitch, score: peak RSS, time per voxel, files written", flush=True)
    print(f"{'size':>6} {'step':>8} {'s':>8} {'ns/voxel':>9} {'RSS MiB':>8} {'files':>7}")
    rows: dict[tuple[int, str], tuple[float, float]] = {}
    for n in sizes:
        vol, pred, final = work / f"vol{n}.zarr", work / f"pred{n}.zarr", work / f"final{n}.zarr"
        pattern_volume(vol, n)
        steps = {
            "predict": ROCKSEG + ["predict", str(vol), "-m", str(model), "-o", str(pred), "--device", "cpu",
                                  "--tile", "96", "--halo", "8", "--overwrite"],
            "stitch": ROCKSEG + ["stitch", str(pred), "-o", str(final), "--overwrite"],
            "score": ROCKSEG + ["score", str(final), str(pred), "--json"],
        }
        for step, cmd in steps.items():
            before = count_files(pred, final)
            rss, wall, _ = peak_rss_mib(cmd)
            files = count_files(pred, final) - before
            rows[n, step] = (wall / n**3 * 1e9, rss)
            print(f"{n:>5}³ {step:>8} {wall:8.1f} {wall / n**3 * 1e9:9.2f} {rss:8.0f} {files:7d}", flush=True)
    if len(sizes) > 1:
        small, big = min(sizes), max(sizes)
        for step in ("predict", "stitch", "score"):
            (t0, m0), (t1, m1) = rows[small, step], rows[big, step]
            print(f"{step}: {big}³ / {small}³ time per voxel {t1 / t0:.2f} (target <= 1.15), "
                  f"peak RSS {m1 / m0:.2f} (target <= 1.10), {m1:.0f} MiB (target <= 2048)")


# ---------------------------------------------------------------------------------------------------- case 2
_PLAN = """
import sys
from pathlib import Path
from rockseg.inference.config import PredictConfig
from rockseg.inference.predicting import _check, _plan
vol, out, model = sys.argv[1:4]
pred, _ = _plan(_check(vol, out, model, PredictConfig(device="cpu", tile=96, halo=8)), PredictConfig(), overwrite=True)
units = pred.units()
for i in range(1000):  # every part of a 1,000-task job array has finished its shards
    with pred.recorder((i, 1000)) as log:
        for u in units[i::1000]:
            log.record(u)
print(len(units))
"""
_CHECK = """
import sys, time
from rockseg.inference import check_complete
start = time.perf_counter()
check_complete(sys.argv[1])
print(f"{time.perf_counter() - start:.3f}")
"""


def case_dry_run(work: Path, n: int, model: Path) -> None:
    print(f"\n## 2. dry run: an empty {n}³ store (fill value only), a 1,000-part job array all done", flush=True)
    vol, pred = work / f"empty{n}.zarr", work / f"emptypred{n}.zarr"
    if not vol.exists():
        zarr.create_array(store=str(vol), shape=(n, n, n), chunks=(256, 256, 256), dtype="uint8", fill_value=0)
    rss, wall, _ = peak_rss_mib(ROCKSEG[:1] + ["-c", "import sys; import zarr; from rockseg.io.intensity import "
                                              "intensity_stats, save_stats; a = zarr.open_array(sys.argv[1]); "
                                              "save_stats(a, sys.argv[1], intensity_stats(a))", str(vol)])
    print(f"statistics of the {n}³ store (a fixed sample of its chunks): {wall:.1f} s, peak RSS {rss:.0f} MiB")
    rss, wall, units = peak_rss_mib(ROCKSEG[:1] + ["-c", _PLAN, str(vol), str(pred), str(model)])
    print(f"creating the prediction and 1,000 completion logs: {wall:.1f} s ({units} shards)")
    task = ROCKSEG + ["predict", str(vol), "-m", str(model), "-o", str(pred), "--device", "cpu", "--tile", "96",
                      "--halo", "8", "--part", "7/1000"]
    rss, wall, out = peak_rss_mib(task)
    print(f"one part task with nothing to do: {wall:.2f} s, peak RSS {rss:.0f} MiB ({out.splitlines()[-1][:90]})")
    rss, wall, inside = peak_rss_mib(ROCKSEG[:1] + ["-c", _CHECK, str(pred)])
    print(f"stitch's completeness check: {float(inside):.3f} s listing and comparing ({wall:.2f} s with Python's "
          f"start and imports), peak RSS {rss:.0f} MiB")
    _, start, _ = peak_rss_mib(ROCKSEG + ["--version"])
    print(f"(for comparison, 'rockseg --version' takes {start:.2f} s here)")
    records = count_files(pred / ".rockseg")
    shards = int(units)
    print(f"files of the complete prediction: {shards} shard files (at most; empty shards are not written) + "
          f"{records} completion records and locks + 1 zarr.json = {shards + records + 1} (target <= 20,000); "
          f"the stitched labels: {shards + 1}")


# ---------------------------------------------------------------------------------------------------- case 3
def wide_volume(path: Path, w: int) -> None:
    if path.exists():
        return
    arr = zarr.create_array(store=str(path), shape=(64, w, w), chunks=(16, 512, 512), dtype="uint16")
    rng = np.random.default_rng(0)
    tile = rng.normal(20000, 4000, (16, 512, 512)).clip(0, 65535).astype(np.uint16)
    for i, (z, y, x) in enumerate(itertools.product(range(0, 64, 16), range(0, w, 512), range(0, w, 512))):
        arr[z : z + 16, y : y + 512, x : x + 512] = np.roll(tile, i, axis=2)[:, : w - y, : w - x]


def case_wide(work: Path, w: int, model: Path) -> None:
    print(f"\n## 3. statistics of a 64 x {w} x {w} uint16 volume, then a second task reusing them", flush=True)
    vol = work / f"wide{w}.zarr"
    wide_volume(vol, w)
    meta = json.loads((vol / "zarr.json").read_text())
    meta.get("attributes", {}).pop("intensity", None)  # a volume written by another tool: no statistics yet
    (vol / "zarr.json").write_text(json.dumps(meta))
    for label in ("first task (computes and stores them)", "second task (reuses them)"):
        cmd = ROCKSEG + ["predict", str(vol), "-m", str(model), "-o", str(work / f"wide{w}-pred.zarr"),
                         "--device", "cpu", "--crop", "0:64,0:64,0:64", "--tile", "32", "--halo", "4",
                         "--overwrite"]
        rss, wall, _ = peak_rss_mib(cmd)
        stored = zarr.open_array(str(vol)).attrs.get("intensity")
        where = "stored in the volume" if stored else "not stored"
        print(f"{label}: {wall:.1f} s, peak RSS {rss:.0f} MiB (target <= 1024); statistics {where}", flush=True)
    _, start, _ = peak_rss_mib(ROCKSEG + ["--version"])
    print(f"(for comparison, 'rockseg --version' takes {start:.2f} s here; a 64^3 predict alone is a few s more)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1024,2048", help="case 1: volume edges, comma-separated")
    ap.add_argument("--dry", type=int, default=10_000, help="case 2: edge of the empty volume")
    ap.add_argument("--wide", type=int, default=8192, help="case 3: plane edge of the 64-plane uint16 volume")
    ap.add_argument("--cases", default="1,2,3", help="which cases to run")
    ap.add_argument("--workdir", type=Path, default=None, help="where volumes are written (default: a temp dir)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model = near_free_model(work / "near-free.pt")
    print(f"# rockseg scale benchmark in {work} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    cases = {c.strip() for c in args.cases.split(",")}
    if "1" in cases:
        case_pipeline(work, sorted(int(s) for s in args.sizes.split(",")), model)
    if "2" in cases:
        case_dry_run(work, args.dry, model)
    if "3" in cases:
        case_wide(work, args.wide, model)


if __name__ == "__main__":
    main()
