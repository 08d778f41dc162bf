"""Train rockseg's default model, the general pore/solid 3D UNet shipped inside rockseg
(``rockseg/data/pore-solid-3d.pt``: what ``rockseg predict VOLUME`` uses with no ``-m``).

Training data: ``--renderings`` sets (3 for the shipped model) of 36 volumes of many rock geometries with randomised
CT physics (:mod:`rockseg.synthetic.scan`); each set holds
- the real Berea sandstone (``../shared/data/berea-400``), z < 256 only, cut into 8 sub-volumes each rendered with
  its own scanner settings (z >= 272 is kept for testing a seen geometry on unseen voxels);
- 16 synthetic sandstones of varied grain size, sorting, elongation, porosity and cementation (new ones per set);
- 12 clay-rich synthetic sandstones rendered by :func:`rockseg.synthetic.simulate_ct` (thick clay of an
  intermediate, textured grey, which counts as solid; half stored as 16-bit; new ones per set).
Every rendering draws its scanner at random: contrast-to-noise 3.5-12, blur 0.5-1.6 voxels, noise correlation
0-1, cupping 0-0.3, rings 0-1 noise sigma, rim thickness, coverage and grey level, 8- or 16-bit with a random grey
scale and offset. Each volume is its own image/label pair of the tile set, so each is normalised by its own
intensity statistics, as ``rockseg predict`` normalises a volume by its own.

Held out of training entirely: the second real rock (``../shared/data/icl-mixedwet-250``), the test half of
Berea and rockseg's synthetic rock of seed 11; the scanner settings of the test cases (benchmarks/accuracy.py) lie
partly outside the training ranges.

    python tools/make_default_model.py --renderings 3 --minutes 105 --threads 2 --out /tmp/candidate.pt
    python benchmarks/accuracy.py --only shipped --model /tmp/candidate.pt     # measure it
    python tools/make_default_model.py --out /tmp/candidate.pt --card tools/default-model-card.json
    cp /tmp/candidate.pt rockseg/data/pore-solid-3d.pt

The shipped default is this recipe with 3 renderings run for 105 minutes on a 2-core CPU (86 epochs, 17053 steps),
with the card ``tools/default-model-card.json``; the one before it (one rendering, 110 minutes) is in the git history:
trained longer on its 36 renderings, it fitted them better and generalised worse. Continuing the shipped model
for 100 more minutes on 6 renderings (``--renderings 6 --init rockseg/data/pore-solid-3d.pt --lr 1e-3
--steps-per-epoch 300 --minutes 100``: 216 volumes, 62 epochs) raised validation mean IoU (0.9335 -> 0.9345) and
lowered mean held-out pore IoU (0.854 -> 0.849; icl hard 0.895 -> 0.868), so it was not shipped: the validation
tiles share the training scanners, the held-out cases do not. ``pore-solid-3d-realistic.pt``
(``-m pore-solid-3d-realistic``) is one rendering without the clay-rich rocks, stopped after 32 minutes (its card:
``tools/realistic-model-card.json``); the first default (six synthetic rocks, six minutes) is in the git history too.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

from rockseg.synthetic import ScanOptions, realistic_scan, synthetic_labels, synthetic_rock

ROOT = Path(__file__).resolve().parents[1]
BEREA = ROOT / ".." / "shared" / "data" / "berea-400" / "berea_pore.tif"
OUT = ROOT / "rockseg" / "data" / "pore-solid-3d.pt"


def random_scan(rng: np.random.Generator) -> ScanOptions:
    """Scanner settings drawn for one training rendering."""
    bits = int(rng.choice([8, 16]))
    contrast = float(rng.uniform(40, 120))
    return ScanOptions(
        rim=(float(rng.uniform(0.0, 1.5)), float(rng.uniform(1.5, 3.0))), rim_coverage=float(rng.uniform(0, 1)),
        contrast=contrast, rim_level=float(rng.uniform(0.3, 0.7)), blur=float(rng.uniform(0.5, 1.6)),
        cnr=float(rng.uniform(3.5, 12)), noise_correlation=float(rng.uniform(0, 1.0)),
        cupping=float(rng.uniform(0, 0.3)), rings=float(rng.uniform(0, 1.0)), bits=bits,
        grey_scale=float(rng.uniform(0.6, 1.2)) if bits == 8 else float(rng.uniform(40, 200)),
        grey_offset=float(rng.uniform(-20, 20)) if bits == 8 else float(rng.uniform(500, 20000)),
    )


@functools.cache
def berea_training_part() -> np.ndarray:
    """Berea's pore mask at z < 256, read once however many renderings use it."""
    return tifffile.imread(BEREA)[:256] == 1


def tag(rendering: int) -> str:
    """The name suffix of a volume of a further rendering (none for the first, whose names stay as they were)."""
    return f"-r{rendering}" if rendering else ""


def geometries(rng: np.random.Generator, rendering: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name, pore mask) of every training geometry of one rendering: Berea's 8 sub-volumes (the same in every
    rendering) and 16 synthetic sandstones (new ones in every rendering)."""
    out = []
    berea = berea_training_part()
    for i, (z, y, x) in enumerate((z, y, x) for z in (0, 128) for y in (0, 200) for x in (0, 200)):
        out.append((f"berea-{i}{tag(rendering)}", berea[z:z + 128, y:y + 200, x:x + 200]))
    for i in range(16):
        r = float(rng.uniform(4, 14))
        lab = synthetic_labels(
            (96, 144, 144), seed=500 + 16 * rendering + i, grain_radius=(r, r * float(rng.uniform(1.1, 2.5))),
            porosity=float(rng.uniform(0.08, 0.35)), grain_elongation=float(rng.uniform(1.0, 2.2)),
            clay_coverage=float(rng.uniform(0, 1)), clay_thickness=float(rng.uniform(1, 5)),
        )
        out.append((f"synthetic-{i}{tag(rendering)}", lab == 0))
    return out


def clay_rich_scans(rng: np.random.Generator, count: int,
                    rendering: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, pore mask) of synthetic sandstones imaged by :func:`rockseg.synthetic.simulate_ct`.

    Their clay is a phase of its own, up to 6 voxels thick and of an intermediate grey with a texture, which a
    pore/solid model must call solid (what ``rockseg demo`` and a clay-rich rock look like); every one draws its
    grey values, noise, blur, cupping and rings, and about half are stored as 16-bit with a random scale and offset.
    """
    out = []
    for i in range(count):
        r = float(rng.uniform(5, 14))
        pore_grey = float(rng.uniform(0, 60))
        clay_grey = pore_grey + float(rng.uniform(35, 90))
        quartz_grey = clay_grey + float(rng.uniform(35, 90))
        image, labels = synthetic_rock(
            (96, 144, 144), seed=700 + count * rendering + i, grain_radius=(r, r * float(rng.uniform(1.1, 2.2))),
            porosity=float(rng.uniform(0.1, 0.35)), grain_elongation=float(rng.uniform(1.0, 2.0)),
            clay_coverage=float(rng.uniform(0.3, 1)), clay_thickness=float(rng.uniform(1, 6)),
            grey=(pore_grey, clay_grey, quartz_grey, float(rng.uniform(quartz_grey, 320))),
            noise=float(rng.uniform(5, 30)), blur=float(rng.uniform(0.6, 1.8)),
            clay_texture=float(rng.uniform(0, 20)), cupping=float(rng.uniform(0, 0.25)),
            rings=float(rng.uniform(0, 8)),
        )
        if rng.random() < 0.5:
            image = (image.astype(np.float32) * float(rng.uniform(40, 200)) + float(rng.uniform(500, 20000)))
            image = image.astype(np.uint16)
        out.append((f"clay-rich-{i}{tag(rendering)}", image, labels == 0))
    return out


def write(path: Path, data: np.ndarray, attrs: dict | None = None) -> None:
    arr = zarr.create_array(store=str(path), shape=data.shape, chunks=(64, 128, 128), dtype=data.dtype)
    arr[...] = data
    if attrs:
        arr.attrs.update(attrs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=105.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rockseg-general"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--init", default=None, help="continue from this model file (e.g. the shipped default) "
                                                     "instead of random weights")
    parser.add_argument("--lr", type=float, default=2e-3, help="initial learning rate of the poly schedule")
    parser.add_argument("--renderings", type=int, default=3,
                        help="sets of 36 training volumes: each further set renders Berea again with other scanners "
                             "and draws new synthetic rocks")
    parser.add_argument("--steps-per-epoch", type=int, default=200,
                        help="training steps between validations on the fixed validation tiles (300 spends less of "
                             "a run validating)")
    parser.add_argument("--card", type=Path, default=None, help="attach this JSON model card to --out and stop")
    parser.add_argument("--choose-specks", action="store_true",
                        help="choose --out's speck size on the validation tiles of this recipe (rendered again into "
                             "--workdir if they are not there) and store it in the model file, without training")
    args = parser.parse_args()
    if args.card is not None:
        from rockseg.models import set_model_card

        set_model_card(args.out, json.loads(args.card.read_text()))
        print(f"wrote the model card of {args.out}")
        return
    from rockseg.training import TrainConfig, train

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.choose_specks:
        if not (work / "tiles.zarr").exists():
            render_tiles(work, args.renderings)
        choose_specks(args.out, work / "tiles.zarr")
        return
    if not (args.init and (work / "tiles.zarr").exists()):  # the rendering is seeded: the same tiles every time
        render_tiles(work, args.renderings)
    # fresh random patches from the whole training regions every step (sampling "random"), a poly schedule over
    # the time budget and the Euler-aware checkpoint choice: the measured defaults of rockseg train
    network = {"init": args.init} if args.init else {"base_channels": 8, "depth": 4}  # init: its own network
    config = TrainConfig(
        arch="unet", max_minutes=args.minutes, steps_per_epoch=args.steps_per_epoch,
        batch_size=4, lr=args.lr, min_lr=2e-5, schedule="poly", loss="ce+dice", augment="strong",
        seed=1 if args.init else 0,  # a continued run draws other patches than the first
        sampling="random", num_threads=args.threads, precision="float32", **network,
    )
    summary = train(work / "tiles.zarr", args.out, config=config, log=print, overwrite=True)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}))


def choose_specks(model_path: Path, tiles: Path) -> None:
    """Choose a model file's speck size on the validation tiles of ``tiles`` and store it in the file (what
    ``rockseg train`` does at the end of every run, for a model trained before it did)."""
    import torch

    from rockseg.models import model_from_payload, read_model_file
    from rockseg.models.modelfile import write_payload
    from rockseg.training.data import _read_parts
    from rockseg.training.tileset import read_tiles
    from rockseg.training.validation import choose_speck_size

    attrs, arrays = read_tiles(tiles)
    parts, _ = _read_parts(tiles, attrs, arrays)
    payload = read_model_file(model_path)
    t0 = time.time()
    chosen = choose_speck_size(model_from_payload(payload), parts["val"], classes=len(payload["phases"]),
                               device=torch.device("cpu"))
    for row in chosen["tried"]:
        print(f"specks {row['specks']:3d}: validation mean IoU {row['mean_iou']:.4f}, piece error "
              f"{row['piece_error']}, Euler error {row['euler_error']}, score {row['score']:.4f}")
    print(f"{model_path}: specks {chosen['specks']} ({len(parts['val'])} validation tiles, {time.time() - t0:.0f} s)")
    write_payload(model_path, {**payload, "postprocess": chosen})


def render_tiles(work: Path, renderings: int) -> None:
    """Render the training volumes of the recipe into ``work`` and cut its tile set ``work/tiles.zarr``.

    ``renderings``: how many sets of 36 volumes; every further set renders Berea's sub-volumes again with other
    scanners and draws 16 new synthetic sandstones and 12 new clay-rich ones (the first set is the same for any
    count)."""
    from rockseg.training import make_tiles

    pairs, record = [], []
    t0 = time.time()
    rendered = []
    for r in range(renderings):
        rng = np.random.default_rng(2026 + r)
        for k, (name, pore) in enumerate(geometries(rng, r)):
            scan = random_scan(rng)
            image, labels = realistic_scan(pore, scan, seed=1000 + 100 * r + k)
            rendered.append((name, image, labels == 0, scan.__dict__))
        rendered += [(name, image, pore, "simulate_ct") for name, image, pore in clay_rich_scans(rng, 12, r)]
    for name, image, pore, scan in rendered:
        img_path, lab_path = work / f"{name}-image.zarr", work / f"{name}-labels.zarr"
        write(img_path, image)
        write(lab_path, (~pore).astype(np.uint8), {"phases": {"0": "pore", "1": "solid"}})
        pairs.append((img_path, lab_path))
        record.append({"name": name, "shape": list(pore.shape), "porosity": float(pore.mean()), "scan": scan})
        print(f"{name}: {pore.shape} porosity {pore.mean():.3f} {scan}", flush=True)
    (work / "training-data.json").write_text(json.dumps(record, indent=1))
    print(f"rendered {len(pairs)} volumes in {time.time() - t0:.0f} s", flush=True)
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    make_tiles(images, labels, work / "tiles.zarr", dims=3, size=48, count=2000, val_fraction=0.15,
               phases={0: "pore", 1: "solid"}, overwrite=True)


if __name__ == "__main__":
    main()
