"""``rockseg demo``: the whole pipeline on a built-in synthetic rock, in a few minutes on a laptop CPU.

generate → convert → tile → train → predict → stitch → score. The rock is split along Z: tiles (training and
validation) come from the first 60 % of the slices, and the score is computed on the last 35 %, which no tile
ever touched (a gap of 5 % keeps the network's context from reaching into it either).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.synthetic import PHASES, synthetic_rock
from rockseg.vocabulary import DEMO_EPOCHS


def run_demo(
    directory: str | os.PathLike[str] = "rockseg-demo", *, size: int = 128, epochs: int = DEMO_EPOCHS,
    minutes: float | None = None, device: str = "auto", seed: int = 0, log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the pipeline on a synthetic rock of ``size``³ voxels; return the held-out score and timings.

    The network trains for ``epochs`` (the learning rate decays over them), so a busy machine gives the same model
    as a quiet one, only later; ``minutes`` trains for that wall time instead (on a busy CPU that may be too few
    steps to learn the rare pyrite).

    Leaves in ``directory``: ``rock.npy`` / ``rock-labels.npy`` (the generated grey values and truth),
    ``image.zarr``, ``labels.zarr``, ``tiles.zarr``, ``model.pt`` (+ its training log), ``pred.zarr``,
    ``final.zarr`` and ``score.json`` (the ``score --json`` document of the held-out part).
    """
    from rockseg.inference import PredictConfig, predict, stitch
    from rockseg.io import convert
    from rockseg.io.stores import open_volume
    from rockseg.metrics import score_volumes
    from rockseg.training import TrainConfig, make_tiles, train

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    times: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        times[name] = time.perf_counter() - t0
        log(f"demo: {name} done in {times[name]:.1f} s")

    t0 = time.perf_counter()
    image, labels = synthetic_rock((size, size, size), seed=seed)
    np.save(out / "rock.npy", image)
    np.save(out / "rock-labels.npy", labels)
    step(f"generate a {size}^3 synthetic rock ({len(PHASES)} phases)", t0)

    t0 = time.perf_counter()
    convert(out / "rock.npy", out / "image.zarr", voxel_size=2.0, overwrite=True)
    convert(out / "rock-labels.npy", out / "labels.zarr", voxel_size=2.0, overwrite=True)
    step("convert", t0)

    train_end = int(round(size * 0.60))
    test_start = int(round(size * 0.65))
    t0 = time.perf_counter()
    crop = (slice(0, train_end), slice(0, size), slice(0, size))
    # many small overlapping patches train a small 3D UNet faster on a CPU than a few big ones
    make_tiles(out / "image.zarr", out / "labels.zarr", out / "tiles.zarr", dims=3, size=32, count=400, crop=crop,
               seed=seed, phases=PHASES, overwrite=True)
    step("tile", t0)

    t0 = time.perf_counter()
    # cross-entropy + Dice: the Dice term keeps the rare pyrite (about 1 % of voxels) from being ignored
    budget = {"epochs": epochs} if minutes is None else {"epochs": 1000, "max_minutes": minutes}
    config = TrainConfig(arch="unet", base_channels=8, depth=3, **budget, batch_size=4, lr=3e-3, loss="ce+dice",
                         device=device, seed=seed)
    summary = train(out / "tiles.zarr", out / "model.pt", config=config, log=log, progress=progress,
                    overwrite=True)
    step(f"train ({summary['epochs']} epochs, best validation mean IoU {summary['best_val_mean_iou']:.3f})", t0)

    t0 = time.perf_counter()
    predict(out / "image.zarr", out / "pred.zarr", model=out / "model.pt",
            config=PredictConfig(device=device), overwrite=True, progress=progress, log=log)
    step("predict", t0)

    t0 = time.perf_counter()
    stitch([out / "pred.zarr"], out / "final.zarr", overwrite=True)
    step("stitch", t0)

    t0 = time.perf_counter()
    held_out = (slice(test_start, size), slice(0, size), slice(0, size))
    score = score_volumes(
        open_volume(out / "final.zarr"), open_volume(out / "labels.zarr"), phases=PHASES, crop=held_out,
        pred_name=str(out / "final.zarr"), truth_name=str(out / "labels.zarr"),
    )
    (out / "score.json").write_text(json.dumps(score, indent=1) + "\n")
    step(f"score (held-out slices {test_start}:{size})", t0)
    return {"score": score, "seconds": time.perf_counter() - start, "times": times, "train": summary}
