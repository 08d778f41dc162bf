"""Train the small pore/solid 3D model shipped inside rockseg (``rockseg/data/pore-solid-3d.pt``).

``rockseg predict big.zarr`` with no ``--model`` uses it. It is trained on synthetic rocks of varied appearance
(grey levels, contrast, noise, blur, grain size), each rescaled to its own 0.5-99.5 percentile range, because at
prediction time a volume is normalised by its own global percentiles. Run from the repository root:

    python tools/make_default_model.py [--minutes 6]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import zarr

from rockseg.synthetic import simulate_ct, synthetic_labels
from rockseg.training import TrainConfig, make_tiles, train

OUT = Path(__file__).resolve().parents[1] / "rockseg" / "data" / "pore-solid-3d.pt"


def rescale(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1) * 255, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    images, labels = [], []
    for i in range(6):
        r = float(rng.uniform(5, 14))
        lab = synthetic_labels((64, 128, 128), seed=100 + i, grain_radius=(r, 1.8 * r),
                               porosity=float(rng.uniform(0.12, 0.35)))
        pore_grey = float(rng.uniform(5, 70))
        grey = (pore_grey, pore_grey + rng.uniform(40, 90), pore_grey + rng.uniform(80, 160), 300.0)
        img = simulate_ct(lab, seed=200 + i, blur=float(rng.uniform(0.6, 1.5)), noise=float(rng.uniform(4, 22)),
                          grey=grey)
        images.append(rescale(img))
        labels.append((lab != 0).astype(np.uint8))  # 0 = pore, 1 = solid (clay, quartz, pyrite)
    image, label = np.concatenate(images), np.concatenate(labels)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for name, data in (("image.zarr", image), ("labels.zarr", label)):
            arr = zarr.create_array(store=str(t / name), shape=data.shape, chunks=(64, 128, 128), dtype="uint8")
            arr[...] = data
        make_tiles(t / "image.zarr", t / "labels.zarr", t / "tiles.zarr", dims=3, size=32, count=600,
                   phases={0: "pore", 1: "solid"}, val_fraction=1 / 6)
        config = TrainConfig(base_channels=8, depth=3, epochs=1000, max_minutes=args.minutes, lr=3e-3,
                             loss="ce+dice", seed=0)
        summary = train(t / "tiles.zarr", args.out, config=config, log=print, overwrite=True)
    print(f"wrote {args.out}: best validation mean IoU {summary['best_val_mean_iou']:.4f}")


if __name__ == "__main__":
    main()
