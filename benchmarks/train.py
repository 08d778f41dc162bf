"""Training throughput: rockseg's training loop against a bare PyTorch loop on tensors already in memory.

For each case, on a synthetic tile set made by ``rockseg.training.make_tiles``, measures optimizer steps per second
of

  - rockseg: ``rockseg.training.train`` with ``--augment basic`` (batches read, normalised and augmented in a
    background thread while the network steps), timed over the training steps of its second epoch (the log's
    ``train_seconds``: data waits included; validation, set-up and file writing excluded);
  - bare: the same network, batch, loss (cross-entropy), optimizer (Adam) and precision in a plain loop over
    batches already normalised in memory, no augmentation: the limit.

Runs are interleaved (rockseg, bare, rockseg, bare...) and the best of ``--repeat`` is kept, so both see the same
machine load. The issue's target is a ratio rockseg/bare of at least 0.9.

    python benchmarks/train.py [--steps 5] [--repeat 3] [--cases 3d,2d] [--device cpu]

Default cases: a 3D UNet (base 8, batch 4, tiles 32^3) and a 2D UNet (base 16, batch 8, tiles 128^2).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from rockseg.models import build_model
from rockseg.synthetic import synthetic_rock
from rockseg.training import (
    TrainConfig, make_tiles, normalize_tiles, read_tiles, tile_normalization, train, training_memory_format, use_bf16,
)

CASES = {
    "3d": dict(dims=3, rock=(64, 96, 96), size=32, base=8, batch=4),
    "2d": dict(dims=2, rock=(12, 256, 256), size=128, base=16, batch=8),
}


def make_tile_set(work: Path, case: dict, *, steps: int) -> Path:
    tiles = work / f"tiles{case['dims']}d.zarr"
    if tiles.exists():
        return tiles
    image, labels = synthetic_rock(case["rock"], seed=0)
    for name, data in (("image.zarr", image), ("labels.zarr", labels)):
        zarr.create_array(store=str(work / f"{case['dims']}d-{name}"), data=data, chunks=(16, 128, 128),
                          overwrite=True)
    make_tiles(work / f"{case['dims']}d-image.zarr", work / f"{case['dims']}d-labels.zarr", tiles,
               dims=case["dims"], size=case["size"], count=max(16, steps * case["batch"]), val_fraction=0.1,
               seed=0)
    return tiles


def rockseg_steps_per_second(tiles: Path, out: Path, case: dict, *, steps: int, device: str) -> tuple[float, float]:
    config = TrainConfig(arch="unet", base_channels=case["base"], depth=3, batch_size=case["batch"], epochs=2,
                         steps_per_epoch=steps, lr=1e-3, loss="ce", optimizer="adam", augment="basic",
                         device=device, seed=0)
    start = time.perf_counter()
    s = train(tiles, out, config=config, overwrite=True)
    whole = time.perf_counter() - start
    out.with_name(out.stem + ".ckpt").unlink()
    last = json.loads(Path(s["log"]).read_text().splitlines()[-1])
    return last["steps"] / last["train_seconds"], whole


def bare_steps_per_second(tiles: Path, case: dict, *, steps: int, device: str) -> float:
    attrs, arrays = read_tiles(tiles)
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = use_bf16("auto", dev)
    lo, inv = tile_normalization(attrs["intensity"], None, len(arrays["train/image"]))
    b = case["batch"]
    batches = []
    for i in range(steps + 2):
        idx = np.arange(i * b, (i + 1) * b) % len(lo)
        x = torch.from_numpy(normalize_tiles(arrays["train/image"][idx], lo[idx], inv[idx])).unsqueeze(1)
        batches.append((x.to(dev), torch.from_numpy(arrays["train/labels"][idx].astype(np.int64)).to(dev)))
    torch.manual_seed(0)
    model = build_model("unet", spatial_dims=case["dims"], in_channels=1, classes=int(attrs["classes"]),
                        base_channels=case["base"], depth=3)
    # the same memory layout as rockseg's loop, so the ratio measures the loop, not the layout
    model = model.to(dev, memory_format=training_memory_format(case["dims"])).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()

    for x, y in batches[:2]:  # warm-up, untimed (allocator, kernels), like rockseg's first epoch
        step(x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x, y in batches[2:]:
        step(x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of each; the best is kept")
    ap.add_argument("--cases", default="3d,2d", help="comma-separated: 3d, 2d")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-train-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"device {args.device}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"{args.steps} steps, best of {args.repeat}")
    for name in args.cases.split(","):
        case = CASES[name.strip()]
        tiles = make_tile_set(work, case, steps=args.steps)
        ours, bare, whole = [], [], []
        for _ in range(args.repeat):
            r, w = rockseg_steps_per_second(tiles, work / f"model{name}.pt", case, steps=args.steps,
                                            device=args.device)
            ours.append(r)
            whole.append(w)
            bare.append(bare_steps_per_second(tiles, case, steps=args.steps, device=args.device))
        edge = "x".join([str(case["size"])] * case["dims"])
        print(f"{name}: UNet base {case['base']}, batch {case['batch']}, tiles {edge}: "
              f"rockseg {max(ours):.3f} steps/s, bare PyTorch {max(bare):.3f} steps/s, "
              f"ratio {max(ours) / max(bare):.3f}  (runs: rockseg {', '.join(f'{v:.3f}' for v in ours)}; "
              f"bare {', '.join(f'{v:.3f}' for v in bare)}; whole train() call {min(whole):.1f} s)")


if __name__ == "__main__":
    main()
