"""Measure the foundation's figures: demo time and held-out IoU, berea-400 scored against itself against
scikit-image, and predict's labels with --block 64 against --block 96. Each step runs the real CLI.

    python benchmarks/foundation.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from skimage.measure import euler_number

ROOT = Path(__file__).resolve().parents[1]
BEREA = ROOT / ".." / "shared" / "data" / "berea-400" / "berea_pore.tif"


def rockseg(*args: object) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rockseg", *map(str, args)], check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    seconds = rockseg("demo", work / "demo")
    doc = json.loads((work / "demo" / "score.json").read_text())
    ious = ", ".join(f"{p['name']} {p['iou']:.3f}" for p in doc["phases"])
    print(f"demo: {seconds:.0f} s end to end; held-out mean IoU {doc['mean_iou']:.4f} ({ious})")

    if BEREA.exists():
        rockseg("convert", BEREA, work / "berea.zarr", "--overwrite")
        vol = zarr.open_array(str(work / "berea.zarr"))[...]
        for conn in (3, 1):
            out = subprocess.run([sys.executable, "-m", "rockseg", "score", work / "berea.zarr", work / "berea.zarr",
                                  "--json", "--connectivity", str(conn)], check=True, capture_output=True, text=True)
            doc = json.loads(out.stdout)
            for p in doc["phases"]:
                ref = euler_number(vol == p["label"], connectivity=conn)
                print(f"berea-400 connectivity {conn} phase {p['label']}: IoU {p['iou']}, Euler {p['euler_pred']} "
                      f"(skimage {ref}, {'equal' if p['euler_pred'] == ref == p['euler_true'] else 'DIFFERENT'})")
    else:
        print(f"berea-400 not found at {BEREA}: skipped")

    image = work / "demo" / "image.zarr"
    model = work / "demo" / "model.pt"
    labels = {}
    for block in (64, 96):
        t = rockseg("predict", image, "-m", model, "-o", work / f"pred{block}.zarr", "--device", "cpu", "--tile", "48",
                    "--halo", "8", "--block", block, "--batch-size", "4", "--overwrite")
        labels[block] = zarr.open_array(str(work / f"pred{block}.zarr"))[...]
        print(f"predict --block {block}: {t:.1f} s")
    same = np.array_equal(labels[64], labels[96])
    print(f"predict --block 64 vs --block 96: {'identical' if same else 'DIFFERENT'} "
          f"({int((labels[64] != labels[96]).sum())} voxels differ of {labels[64].size})")


if __name__ == "__main__":
    main()
