"""Measure ``rockseg score``: peak memory and time on two 1024^3 label volumes, and time on 512^3 against NumPy +
scikit-image in memory on the same pair (whose numbers must be equal).

    python benchmarks/score.py [--workdir DIR] [--size 1024] [--small 512]

The label volumes (uint8, 4 phases, chunks of 128^3) are made chunk by chunk straight into Zarr with bounded
memory, and kept in the work folder so that a re-run does not make them again. The truth is a smooth
three-phase-boundary field (sums of sines, like a gyroid) cut into 4 phases; the prediction is the same field
perturbed by a finer wave, with 0.5 % of the voxels set to a random phase. Peak memory is the largest resident set
of the child process that runs ``python -m rockseg score A B --json`` (``getrusage(RUSAGE_CHILDREN)`` after the first
child, so no other child is counted).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import resource
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


def make_volume(path: Path, size: int, perturbed: bool) -> float:
    """Write (or keep, if complete) a size^3 label store chunk by chunk; return the seconds spent."""
    if path.exists() and zarr.open_array(str(path), mode="r").attrs.get("complete"):
        return 0.0
    start = time.perf_counter()
    array = zarr.create_array(
        store=str(path), shape=(size,) * 3, chunks=(CHUNK,) * 3, dtype="uint8", compressors=compressors_for(),
        overwrite=True,
    )

    def write(corner: tuple[int, ...]) -> None:
        hi = tuple(min(c + CHUNK, size) for c in corner)
        array[tuple(slice(a, b) for a, b in zip(corner, hi))] = labels_block(corner, hi, perturbed)

    corners = list(itertools.product(range(0, size, CHUNK), repeat=3))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(write, corners))  # one chunk per task: memory stays a few chunks
    array.attrs["complete"] = True
    return time.perf_counter() - start


def rockseg_score(*args: object) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rockseg", "score", *map(str, args), "--json"],
                          check=True, capture_output=True, text=True)
    return time.perf_counter() - start, json.loads(proc.stdout)


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
    parser.add_argument("--size", type=int, default=1024, help="edge of the large pair (memory and time)")
    parser.add_argument("--small", type=int, default=512, help="edge of the pair compared with scikit-image")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-score-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at the start; work in {work}")

    pairs = {}
    for size in (args.size, args.small):
        pred, truth = work / f"pred-{size}.zarr", work / f"truth-{size}.zarr"
        seconds = make_volume(truth, size, perturbed=False) + make_volume(pred, size, perturbed=True)
        made = f"made in {seconds:.0f} s" if seconds else "kept from an earlier run"
        print(f"{size}^3 pair (uint8, 4 phases, chunks {CHUNK}^3): {made}")
        pairs[size] = (pred, truth)

    # The first child process of this run: RUSAGE_CHILDREN is its own peak.
    seconds, doc = rockseg_score(*pairs[args.size])
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    verdict = "under" if peak_gib < LIMIT_GIB else "OVER"
    print(f"rockseg score {args.size}^3 pair: {seconds:.1f} s ({args.size**3 / seconds / 1e6:.0f} Mvoxel/s), "
          f"peak resident memory {peak_gib:.2f} GiB ({verdict} the {LIMIT_GIB} GiB limit); "
          f"mean IoU {doc['mean_iou']:.4f}, Euler pred/true {[(p['euler_pred'], p['euler_true']) for p in doc['phases']]}")

    seconds, doc = rockseg_score(*pairs[args.small])
    sliced, _ = rockseg_score(*pairs[args.small], "--per-slice", "z")
    load, compute, ref = reference(*pairs[args.small])
    print(f"{args.small}^3 pair: rockseg score {seconds:.1f} s (whole command: start-up, reading and decompressing "
          f"included; {sliced:.1f} s with --per-slice z)")
    print(f"{args.small}^3 pair: NumPy + scikit-image in memory {compute:.1f} s (+ {load:.1f} s to load the arrays); "
          f"rockseg / reference = {seconds / compute:.2f}; numbers "
          f"{'equal' if same_numbers(doc, ref) else 'DIFFERENT'} (confusion matrix and 8 Euler numbers)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other work on the machine disturbs the timings)")


if __name__ == "__main__":
    main()
