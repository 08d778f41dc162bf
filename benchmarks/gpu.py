"""GPU throughput: the model alone in GPU memory against `rockseg predict` end to end, on one GPU.

Run as it is on a machine with a CUDA GPU (it installs and downloads nothing, and takes a few minutes):

    python benchmarks/gpu.py [--size 768] [--tile 128] [--halo 8] [--base 16] [--batch-size 8] [--workers 4]

It writes an N^3 uint8 volume (a 128^3 synthetic rock in every 128^3 chunk) and a random 3D UNet (base 16,
depth 3) model file, then prints, with bf16 autocast:
  - the model alone: batches of tiles already on the GPU through rockseg's runner in its mode (batch norm folded,
    channels-last, only the kept centre decoded, arg-max on the GPU), timed with the GPU synchronised: kept
    Mvoxel/s and peak GPU memory;
  - `predict` end to end in this process (reading Zarr, normalising, batching, the copy to the GPU, labels back,
    writing Zarr, completion records): Mvoxel/s of the block loop, peak GPU memory;
  - `rockseg predict` as a command (a subprocess, start-up included): Mvoxel/s;
  - the ratio of end to end to the model alone (aim: at least 0.9, and 3x10^8 voxel/s on one H100).
Without a GPU it says so and exits 0; ``--smoke`` runs a tiny version on the CPU (float32) to test the script.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from predict_memory import make_volume  # benchmarks/ is on the path when run as a script
from rockseg.models import build_model, save_model_file


def model_alone(net: torch.nn.Module, device: torch.device, precision: str, tile: int, halo: int, batch: int,
                tiles: int) -> tuple[float, float]:
    """Kept voxels per second and peak GPU memory (MiB) of ``tiles`` tiles through rockseg's runner, on-device."""
    from rockseg.inference import TileRunner

    runner = TileRunner(net, spatial_dims=3, device=device, precision=precision, probabilities=False,
                        margin=(halo,) * 3)
    x = torch.rand(batch, 1, tile, tile, tile, device=device)
    margin = [halo] * 3

    def run() -> None:
        with torch.inference_mode():
            runner._logits(x, precision == "bf16", margin).argmax(1).to(torch.uint8)

    for _ in range(3):  # warm up: kernel choice, allocator
        run()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batches = max(1, math.ceil(tiles / batch))
    start = time.perf_counter()
    for _ in range(batches):
        run()
    _sync(device)
    seconds = time.perf_counter() - start
    kept = batches * batch * (tile - 2 * halo) ** 3
    return kept / seconds, _peak_mib(device)


def end_to_end(vol: Path, model: Path, out: Path, args: argparse.Namespace, precision: str) -> tuple[float, float]:
    """Voxels per second of predict's block loop in this process, and its peak GPU memory (MiB)."""
    from rockseg.inference import PredictConfig, predict

    config = PredictConfig(device=args.device, tile=args.tile, halo=args.halo, batch_size=args.batch_size,
                           block=args.block, workers=args.workers, precision=precision)
    predict(vol, out, model=model, config=config, overwrite=True, log=lambda line: None)  # warm up
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    summary = predict(vol, out, model=model, config=config, overwrite=True, log=lambda line: None)
    return summary["voxels_per_second"], _peak_mib(torch.device(args.device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--halo", type=int, default=8)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=4, help="blocks in flight")
    ap.add_argument("--smoke", action="store_true", help="a tiny run on the CPU, to test this script")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA GPU on this machine: nothing measured (run it on a GPU node, or --smoke for a CPU test run)")
        return 0
    if args.smoke:
        args.size, args.tile, args.halo, args.base, args.batch_size = 64, 32, 4, 2, 2
    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    device = torch.device(args.device)
    precision = "bf16" if device.type == "cuda" else "float32"
    step = args.tile - 2 * args.halo
    args.block = 4 * step  # 64 tiles a block: batches fill from one block
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    n = args.size
    start = time.perf_counter()
    vol, stats = make_volume(work, n)
    torch.manual_seed(0)
    arch_args = {"spatial_dims": 3, "classes": 3, "base_channels": args.base, "depth": 3}
    net = build_model("unet", **arch_args).eval()
    model = work / "unet.pt"
    save_model_file(model, net, arch="unet", arch_args=arch_args, spatial_dims=3, in_channels=1,
                    phases={i: f"p{i}" for i in range(3)}, normalization=stats, tile=args.tile, halo=args.halo)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke run)"
    print(f"{name}: {n}^3 volume ({n**3 / 1e6:.1f} Mvoxel, made in {time.perf_counter() - start:.0f} s), UNet base "
          f"{args.base} depth 3, tile {args.tile}, halo {args.halo}, batch {args.batch_size}, block {args.block}, "
          f"{args.workers} blocks in flight, {precision}", flush=True)

    tiles = math.ceil(n / step) ** 3
    alone, alone_mem = model_alone(net, device, precision, args.tile, args.halo, args.batch_size, tiles)
    print(f"model alone ({tiles} tiles on the device): {alone / 1e6:.2f} Mvoxel/s, peak GPU memory "
          f"{alone_mem:.0f} MiB", flush=True)
    e2e, e2e_mem = end_to_end(vol, model, work / "pred.zarr", args, precision)
    print(f"predict end to end (block loop, in process): {e2e / 1e6:.2f} Mvoxel/s, peak GPU memory "
          f"{e2e_mem:.0f} MiB", flush=True)
    cmd = [sys.executable, "-m", "rockseg", "predict", str(vol), "-m", str(model), "-o", str(work / "cli.zarr"),
           "--device", args.device, "--tile", str(args.tile), "--halo", str(args.halo), "--batch-size",
           str(args.batch_size), "--block", str(args.block), "--workers", str(args.workers), "--precision",
           precision, "--overwrite"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    print(f"rockseg predict command (start-up included): {n**3 / wall / 1e6:.2f} Mvoxel/s ({wall:.1f} s)")
    print(f"end to end / model alone: {e2e / alone:.2f} (block loop), {n**3 / wall / alone:.2f} (whole command)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
