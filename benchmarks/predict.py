"""Prediction: rockseg end to end against MONAI, the engine's own ceiling, and the seams at the volume's faces.

Three measurements, one per flag:

    python benchmarks/predict.py [--sizes 256,512] [--arch unet] [--tile 64] [--halo 8] [--base 8] [--batch-size 4]
        `rockseg predict` (a subprocess: reading Zarr, normalising, tiling, the model, writing Zarr, completion
        records) against MONAI's sliding_window_inference (a subprocess that reads the same Zarr volume into
        memory, normalises it the same way, runs the same network with the same window, overlap 2 * halo / tile
        and batch, takes the arg-max and writes the labels to Zarr), rounds interleaved (the machine is shared):
        peak resident memory and Mvoxel/s of each. MONAI is not a dependency of rockseg (`pip install monai`).
    python benchmarks/predict.py --engine [--sizes 384]
        `rockseg predict` with a linear model (``--arch linear``: a 1x1x1 classifier), --tile 96 --halo 8: what
        the engine sustains when the network costs next to nothing: Mvoxel/s of the block loop and of the whole command,
        the CPU time per voxel of the whole process and of the thread that runs the model, and the load.
    python benchmarks/predict.py --seams [--sizes 128]
        the shipped model (pore-solid-3d) on a synthetic rock: labels of the clamped face tiles against the former
        mirrored ones (the same run on the volume mirrored by two steps, cropped back), by distance from the
        nearest face.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from predict_memory import make_volume, peak_rss_mib  # benchmarks/ is on the path when run as a script
from rockseg.models import build_model, save_model_file

MONAI_CHILD = r"""
import sys, time, numpy as np, torch, zarr
from monai.inferers import sliding_window_inference
from rockseg.io.intensity import normalize
from rockseg.models import model_from_payload, read_model_file
vol, model, out, t, h, batch = sys.argv[1:7]
t, h, batch = int(t), int(h), int(batch)
start = time.perf_counter()
array = zarr.open_array(vol, mode="r")
payload = read_model_file(model)
net = model_from_payload(payload).eval().to(memory_format=torch.channels_last_3d)
x = torch.from_numpy(normalize(array[...], dict(array.attrs)["intensity"]))[None, None]
with torch.inference_mode():
    logits = sliding_window_inference(x, roi_size=(t, t, t), sw_batch_size=batch, predictor=net,
                                      overlap=2 * h / t, mode="constant")
    labels = logits.argmax(1)[0].to(torch.uint8).numpy()
zarr.create_array(store=out, data=labels, chunks=array.chunks, overwrite=True)
print(f"MONAI {labels.size} voxels in {time.perf_counter() - start:.2f} s")
"""


def write_model(path: Path, arch: str, base: int, tile: int, halo: int, stats: dict, depth: int = 3) -> None:
    """A model file: a random UNet (timing only), or a linear classifier with three grey-value bands."""
    torch.manual_seed(0)
    if arch == "linear":
        args = {"spatial_dims": 3, "classes": 3}
        net = build_model("linear", **args).eval()
        with torch.no_grad():
            net.logits.weight.copy_(torch.tensor([0.0, 10.0, 20.0]).view(3, 1, 1, 1, 1))
            net.logits.bias.copy_(torch.tensor([0.0, -3.0, -10.0]))
    else:
        args = {"spatial_dims": 3, "classes": 3, "base_channels": base, "depth": depth}
        net = build_model("unet", **args).eval()
    save_model_file(path, net, arch=arch, arch_args=args, spatial_dims=3, in_channels=1,
                    phases={i: f"p{i}" for i in range(3)}, normalization=stats, tile=tile, halo=halo)


def _rockseg_cmd(vol: Path, model: Path, out: Path, tile: int, halo: int, batch: int) -> list[str]:
    return [sys.executable, "-m", "rockseg", "predict", str(vol), "-m", str(model), "-o", str(out), "--device",
            "cpu", "--tile", str(tile), "--halo", str(halo), "--batch-size", str(batch), "--overwrite"]


def against_monai(args: argparse.Namespace, work: Path) -> None:
    """rockseg end to end against MONAI end to end: peak RSS and speed, rounds interleaved."""
    try:
        import monai  # noqa: F401
    except ImportError:
        print("MONAI: not installed (pip install monai) - only rockseg is measured")
        monai = None
    t, h, b = args.tile, args.halo, args.batch_size
    for n in args.sizes:
        vol, stats = make_volume(work, n)
        model = work / f"{args.arch}.pt"
        write_model(model, args.arch, args.base, t, h, stats)
        print(f"{n}^3 ({n**3 / 1e6:.0f} Mvoxel), {args.arch}{f' base {args.base}' if args.arch == 'unet' else ''}, "
              f"tile {t}, halo {h} (MONAI overlap {2 * h / t:.3f}), batch {b}, load {os.getloadavg()[0]:.1f}",
              flush=True)
        best: dict[str, list[tuple[float, float]]] = {"rockseg": [], "MONAI": []}
        for r in range(args.rounds):
            rss, wall, _ = peak_rss_mib(_rockseg_cmd(vol, model, work / "pred.zarr", t, h, b))
            best["rockseg"].append((rss, wall))
            line = f"  round {r + 1}: rockseg {wall:.1f} s, peak RSS {rss:.0f} MiB"
            if monai is not None:
                cmd = [sys.executable, "-c", MONAI_CHILD, str(vol), str(model), str(work / "monai.zarr"), str(t),
                       str(h), str(b)]
                rss, wall, _ = peak_rss_mib(cmd)
                best["MONAI"].append((rss, wall))
                line += f"; MONAI {wall:.1f} s, peak RSS {rss:.0f} MiB"
            print(line, flush=True)
        for name, runs in best.items():
            if runs:
                rss, wall = min(r for r, _ in runs), min(w for _, w in runs)
                print(f"  {name:8s} best {wall:6.1f} s ({n**3 / wall / 1e6:6.2f} Mvoxel/s whole command), "
                      f"peak RSS {rss:6.0f} MiB")
        if best["MONAI"]:
            mem = min(r for r, _ in best["rockseg"]) / min(r for r, _ in best["MONAI"])
            speed = min(w for _, w in best["MONAI"]) / min(w for _, w in best["rockseg"])
            print(f"  rockseg / MONAI: memory {mem:.2f}x, speed {speed:.2f}x", flush=True)


def engine_ceiling(args: argparse.Namespace, work: Path) -> None:
    """The engine with a near-free network: Mvoxel/s and the CPU time per voxel, of all and of the model thread."""
    t, h = 96, 8
    for n in args.sizes:
        vol, stats = make_volume(work, n)
        model = work / "linear.pt"
        write_model(model, "linear", 0, t, h, stats)
        for r in range(args.rounds):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            load = os.getloadavg()[0]
            rss, wall, out = peak_rss_mib(_rockseg_cmd(vol, model, work / "pred.zarr", t, h, args.batch_size))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            loop = float(re.search(r"in ([\d.]+) s", out).group(1))
            print(f"{n}^3 linear, tile {t}, halo {h}, round {r + 1}: block loop {n**3 / loop / 1e6:.1f} Mvoxel/s, "
                  f"whole command {n**3 / wall / 1e6:.1f} Mvoxel/s ({wall:.1f} s with start-up), CPU {cpu:.1f} s = "
                  f"{cpu / n**3 * 1e9:.1f} ns/voxel (command), peak RSS {rss:.0f} MiB, load {load:.1f}", flush=True)
        _engine_breakdown(vol, model, n, args.batch_size)


def _engine_breakdown(vol: Path, model: Path, n: int, batch: int) -> None:
    """In this process: CPU time of the block loop per voxel, and the share of the thread that runs the model."""
    from rockseg.inference import PredictConfig, TileRunner, predict

    spent = [0.0]
    call = TileRunner.__call__

    def timed(self, *a, **k):
        start = time.thread_time()
        try:
            return call(self, *a, **k)
        finally:
            spent[0] += time.thread_time() - start

    TileRunner.__call__ = timed
    try:
        config = PredictConfig(tile=96, halo=8, device="cpu", batch_size=batch)
        predict(vol, vol.with_name("breakdown.zarr"), model=model, config=config, overwrite=True)  # warm
        spent[0] = 0.0
        start, wall = time.process_time(), time.perf_counter()
        s = predict(vol, vol.with_name("breakdown.zarr"), model=model, config=config, overwrite=True)
        cpu, wall = time.process_time() - start, time.perf_counter() - wall
    finally:
        TileRunner.__call__ = call
    v = s["voxels"]
    print(f"  in-process block loop: {v / wall / 1e6:.1f} Mvoxel/s, CPU {cpu / v * 1e9:.1f} ns/voxel, of which the "
          f"model thread {spent[0] / v * 1e9:.1f} (network, arg-max); the rest reads, decodes, normalises, "
          f"encodes and writes on the other threads. Two idle cores at this CPU time: "
          f"{2 / (cpu / v) / 1e6:.0f} Mvoxel/s", flush=True)


def face_seams(args: argparse.Namespace, work: Path) -> None:
    """Clamped face tiles against the former mirrored ones, by distance from the nearest face (shipped model)."""
    from rockseg.inference import PredictConfig, predict
    from rockseg.io.intensity import intensity_stats
    from rockseg.models import read_model_file, resolve_model
    from rockseg.synthetic import synthetic_rock

    payload = read_model_file(resolve_model(None))
    t, h = int(payload["tile"]), int(payload["halo"])
    s = t - 2 * h
    for n in args.sizes:
        image, labels = synthetic_rock((n, n, n), seed=3)
        truth = (labels != 0).astype(np.uint8)  # the shipped model's phases: 0 pore, 1 solid (clay, quartz, pyrite)
        stats = intensity_stats(image)
        pad = 2 * s  # a multiple of the step: the padded run's grid is the plain run's, moved by whole tiles
        for name, data in (("plain", image), ("mirrored", np.pad(image, pad, mode="reflect"))):
            arr = zarr.create_array(store=str(work / f"{name}.zarr"), data=data, chunks=(64, 64, 64), overwrite=True)
            arr.attrs["intensity"] = stats
        crop = ",".join([f"{pad}:{pad + n}"] * 3)
        predict(work / "plain.zarr", work / "clamped.zarr", config=PredictConfig(device="cpu"), overwrite=True)
        predict(work / "mirrored.zarr", work / "reflected.zarr", config=PredictConfig(device="cpu", crop=crop),
                overwrite=True)
        a = zarr.open_array(str(work / "clamped.zarr"))[...]
        b = zarr.open_array(str(work / "reflected.zarr"))[...]
        i = np.arange(n)
        d1 = np.minimum(i, n - 1 - i)
        dist = np.minimum(np.minimum(d1[:, None, None], d1[None, :, None]), d1[None, None, :])
        differ = a != b
        print(f"{n}^3 synthetic rock, shipped model (tile {t}, halo {h}, step {s}): clamped face tiles against "
              f"mirrored ones: {differ.mean():.4%} of all labels differ")
        for lo, hi in ((0, 1), (1, h), (h, s), (s, 2 * s), (2 * s, n)):
            sel = (dist >= lo) & (dist < hi)
            if sel.any():
                print(f"  {lo:3d} <= distance from the nearest face < {hi:3d}: {differ[sel].mean():.4%} differ "
                      f"({int(sel.sum())} voxels); agree with the truth: clamped {(a == truth)[sel].mean():.4%}, "
                      f"mirrored {(b == truth)[sel].mean():.4%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", action="store_true", help="the engine's ceiling with a near-free network")
    ap.add_argument("--seams", action="store_true", help="clamped face tiles against mirrored ones")
    ap.add_argument("--sizes", default=None, help="volume edges, comma-separated")
    ap.add_argument("--arch", choices=("unet", "linear"), default="unet")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--halo", type=int, default=8)
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    default = "384" if args.engine else "128" if args.seams else "256,512"
    args.sizes = [int(v) for v in (args.sizes or default).split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-predict-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    if args.engine:
        engine_ceiling(args, work)
    elif args.seams:
        face_seams(args, work)
    else:
        against_monai(args, work)


if __name__ == "__main__":
    main()
