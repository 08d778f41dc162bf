"""Prediction throughput: rockseg end to end against the model alone in memory (the limit) and MONAI.

Prints, in one run on the same volume, model, tile and halo:
  - rockseg predict end to end (a real subprocess: reading Zarr, normalising, tiling, the model, writing Zarr,
    markers), as output voxels per second of the whole command and of its block loop;
  - the model alone on the same tiles already in memory, in the same fastest mode (channels-last, the precision
    rockseg chose, the decoder computing only the kept centre of each tile), timing only the forward passes:
    the limit;
  - MONAI's sliding_window_inference in memory with the same window, overlap and batch (needs `pip install monai`;
    it is not a dependency of rockseg), given the network as trained (what a MONAI script runs), and for
    transparency also given rockseg's inference copy of it (batch norm folded into the convolutions), which shows
    how much of the difference is the engine and how much the network preparation. MONAI computes every window
    whole and blends the overlaps; rockseg keeps each tile's centre and does not compute what only the halo needs.
Also the peak resident memory of the rockseg process. This process tunes its allocator as `rockseg predict` does
(devices.tune_malloc), so the in-memory measurements run under the same conditions as rockseg.

    python benchmarks/predict.py [--size 160] [--tile 64] [--halo 8] [--base 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from predict_memory import peak_rss_mib  # benchmarks/ is on the path when run as a script
from rockseg.devices import tune_malloc
from rockseg.inference import TileRunner
from rockseg.models import UNet, save_model_file
from rockseg.io.intensity import intensity_stats, normalize
from rockseg.synthetic import synthetic_rock


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--halo", type=int, default=8)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tune_malloc()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-predict-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    n, t, h = args.size, args.tile, args.halo
    step = t - 2 * h
    block = step * max(1, round(128 / step))

    image, _ = synthetic_rock((n, n, n), seed=0)
    vol = work / "vol.zarr"
    arr = zarr.create_array(store=str(vol), shape=image.shape, chunks=(64, 64, 64), dtype="uint8", overwrite=True)
    arr[...] = image
    stats = intensity_stats(image)
    arr.attrs["intensity"] = stats
    torch.manual_seed(0)
    arch_args = {"spatial_dims": 3, "classes": 4, "base_channels": args.base, "depth": 3}
    net = UNet(**arch_args).eval()
    save_model_file(work / "model.pt", net, arch="unet", arch_args=arch_args, spatial_dims=3, in_channels=1,
                    phases={i: f"p{i}" for i in range(4)}, normalization=stats, tile=t, halo=h)
    print(f"volume {n}^3 ({n**3 / 1e6:.1f} Mvoxels), 3D UNet base {args.base}, tile {t}, halo {h}, block {block}, "
          f"batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}")

    cmd = [sys.executable, "-m", "rockseg", "predict", str(vol), "-m", str(work / "model.pt"), "-o",
           str(work / "pred.zarr"), "--device", args.device, "--tile", str(t), "--halo", str(h), "--block",
           str(block), "--batch-size", str(args.batch_size), "--overwrite"]
    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    data = np.pad(normalize(image, stats), [(h, h + (-n) % step)] * 3, mode="reflect")
    k = -(-n // step)
    tiles = [data[z * step : z * step + t, y * step : y * step + t, x * step : x * step + t]
             for z, y, x in itertools.product(range(k), repeat=3)]
    batches = [np.stack(tiles[i : i + args.batch_size])[:, None] for i in range(0, len(tiles), args.batch_size)]
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        sliding_window_inference = None
        print("MONAI: not installed (pip install monai) - skipped")

    # Rounds interleave the three measurements; the best of each is reported (a shared machine is noisy).
    walls, loops, limits, monais, monais_folded, precision, peak = [], [], [], [], [], "float32", 0.0
    for r in range(args.repeat):
        start = time.perf_counter()
        hwm, _, stdout = peak_rss_mib(cmd)
        walls.append(time.perf_counter() - start)
        peak = max(peak, hwm)
        loops.append(float(re.search(r"in ([\d.]+) s", stdout).group(1)))
        found = re.search(r"\[(\w+)\]", stdout)
        precision = found.group(1) if found else "float32"

        # the limit: the same tiles, already in memory, through the same runner in the same mode
        runner = TileRunner(net, spatial_dims=3, device=device, precision=precision, probabilities=False,
                            margin=(h, h, h))
        runner(batches[0])  # warm up
        start = time.perf_counter()
        for b in batches:
            runner(b)
        limits.append(time.perf_counter() - start)

        if sliding_window_inference is not None:
            x = torch.from_numpy(normalize(image, stats))[None, None].to(device)
            for times, model in ((monais, net), (monais_folded, runner.model)):
                model = model.to(device).to(memory_format=torch.channels_last_3d)
                with torch.inference_mode():
                    start = time.perf_counter()
                    sliding_window_inference(x, roi_size=(t, t, t), sw_batch_size=args.batch_size, predictor=model,
                                             overlap=2 * h / t, mode="constant").argmax(1)
                    times.append(time.perf_counter() - start)
        print(f"round {r + 1}: rockseg {walls[-1]:.1f} s (block loop {loops[-1]:.1f} s), limit {limits[-1]:.1f} s"
              + (f", MONAI {monais[-1]:.1f} s (folded network {monais_folded[-1]:.1f} s)" if monais else ""),
              flush=True)

    wall, loop, limit = min(walls), min(loops), min(limits)
    rock_rate, lim_rate = n**3 / loop, n**3 / limit
    print(f"rockseg predict: best {wall:.1f} s command ({n**3 / wall / 1e6:.2f} Mvoxel/s), block loop {loop:.1f} s "
          f"({rock_rate / 1e6:.2f} Mvoxel/s), precision {precision}, peak RSS {peak:.0f} MiB")
    print(f"model alone on the same {len(tiles)} tiles in memory: best {limit:.1f} s ({lim_rate / 1e6:.2f} Mvoxel/s)")
    monai_rate = None
    if monais:
        monai_rate = n**3 / min(monais)
        print(f"MONAI sliding_window_inference in memory: best {min(monais):.1f} s ({monai_rate / 1e6:.2f} Mvoxel/s); "
              f"given rockseg's folded network {min(monais_folded):.1f} s ({n**3 / min(monais_folded) / 1e6:.2f} "
              f"Mvoxel/s)")
    print(f"rockseg / limit = {rock_rate / lim_rate:.2f} (block loop), {n**3 / wall / lim_rate:.2f} (whole command)")
    if monai_rate:
        print(f"rockseg / MONAI = {rock_rate / monai_rate:.2f} (block loop), {n**3 / wall / monai_rate:.2f} (whole command)")


if __name__ == "__main__":
    main()
