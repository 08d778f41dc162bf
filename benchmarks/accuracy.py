"""Accuracy on real rock, end to end through the CLI as a user would run it (issues 6, 15 and 19).

    python benchmarks/accuracy.py [--workdir DIR] [--only sandstone|berea|realistic|shipped|finetune] [--minutes-2d M]
                                  [--minutes-3d M] [--berea-dims 3,2] [--noise N] [--minutes-realistic M]
                                  [--recipe "TRAIN OPTIONS"] [--train-half lower|test] [--minutes-finetune M]

With the defaults (12 minutes per 2D model, 40 for the 3D model) the sandstone and berea cases take about 70
minutes on a 2-core CPU, realistic about 20, shipped about 5 and finetune about 40 (4 minutes per run).

1. ``../shared/data/sandstone-versa``: a 2D model trained on 8 of the 10 real 4-phase slices (z = 100 and 300 are
   held out: interior slices, 50 voxels from their nearest training slices), scored on the other 2. The baseline
   is scikit-image's ``threshold_multiotsu`` with 4 classes, computed on the held-out slices themselves. Prints
   per-phase IoU, mean IoU and the 2D Euler number of each phase per held-out slice (the slices are 200 voxels
   apart, so a 3D Euler number of the two would mean nothing), and the minutes spent tiling + training.
2. ``../shared/data/berea-400``: a simulated CT of the real 400^3 pore/grain segmentation (partial-volume blur,
   noise, beam-hardening cupping, ring artefacts; :func:`simulated_berea` says how hard, and why). A 3D model
   trained on z < 200 and a 2D model on the same half, both scored on z >= 200 against the true labels;
   baseline: Otsu's threshold on the test half. Prints the contrast-to-noise of the simulation beside the real
   sandstone-versa scan's, then pore IoU and the pore Euler number (26-neighbourhood) against the truth.

3. ``realistic`` (issue 15's hard case): the real Berea geometry (256^3) rendered by
   :func:`rockseg.synthetic.realistic_scan` with three phases (pore, a thin micro-porous rim of intermediate grey,
   solid), correlated noise at contrast-to-noise 4.5 between adjacent phases, blur, cupping, rings, 8-bit. A 3D
   model trained the user's way (``tile --dims 3 --size 64`` on the lower half, ``train --dims 3 --max-minutes
   15`` with no other option unless ``--recipe``), scored on the upper half and on the icl-mixedwet geometry
   rendered by the same scanner (never seen in training). Against a 3x3x3 median + multi-Otsu and a reference
   that knows the simulation (the noise-free blurred phases cut at the midpoints: what thresholds would get from
   a perfect scanner of this blur).
4. ``shipped``: the model ``rockseg predict VOLUME`` uses with no options, on rocks and scanners it never saw:
   icl-mixedwet under three scanners (HARD, HARD16: 16-bit, blurrier, noise correlated further than in
   training, stronger cupping; MILD) and the held-out part of Berea (z >= 272; the shipped model saw z < 256) under
   two. Pore IoU and pore Euler number against a median + Otsu threshold and the noise-free reference of case 3
   (the rim counts as solid), and the prediction speed.
5. ``finetune`` (issue 19): ``benchmarks/finetune.py``'s three comparisons, ``--minutes-finetune`` per run: the
   shipped model fine-tuned (``--init default``) against from scratch by test pore IoU per time budget, labels on
   every 10th slice against dense, and ``--arch pix2pix`` against a UNet on sandstone-versa.

The work directory keeps every store, model, log and training curve, so a run can be looked at afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from skimage.filters import threshold_multiotsu, threshold_otsu
from skimage.measure import euler_number

from rockseg.synthetic import SCAN_PHASES, ScanOptions, realistic_scan, synthetic_rock

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
SANDSTONE = DATA / "sandstone-versa"
BEREA = DATA / "berea-400" / "berea_pore.tif"
ICL = DATA / "icl-mixedwet-250" / "MW_fw0.tif"
HELD_OUT = ("0100", "0300")
SANDSTONE_PHASES = "0=pore,1=clay,2=quartz,3=pyrite"
BLUR = 0.8  # voxels, the point-spread function of the simulated scanner
NOISE = 20.0  # grey levels, standard deviation of the simulated noise: the hard headline (see simulated_berea)


def rockseg(*args: object, quiet: bool = True) -> tuple[float, str]:
    """Run one rockseg command; return (seconds, stdout). Stops the benchmark on a failure, showing stderr."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "rockseg", *map(str, args)]
    print("  $ rockseg " + " ".join(map(str, args)), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    if not quiet:
        print(proc.stdout, end="")
    return time.perf_counter() - start, proc.stdout


def iou_table(pred: np.ndarray, truth: np.ndarray, classes: int) -> list[float]:
    """Per-class IoU with NumPy (for the thresholding baselines)."""
    out = []
    for k in range(classes):
        p, t = pred == k, truth == k
        union = np.logical_or(p, t).sum()
        out.append(float(np.logical_and(p, t).sum() / union) if union else float("nan"))
    return out


def print_score(title: str, doc: dict, *, per_slice: bool) -> None:
    print(f"{title}: mean IoU {doc['mean_iou']:.4f}")
    for p in doc["phases"]:
        line = f"    {p['name']:<8} IoU {p['iou']:.4f}  fraction {p['fraction_pred']:.4f} (true {p['fraction_true']:.4f})"
        if not per_slice:
            rel = abs(p["euler_pred"] - p["euler_true"]) / max(1, abs(p["euler_true"]))
            line += f"  Euler {p['euler_pred']} (true {p['euler_true']}, {100 * rel:.1f}% off)"
        print(line)
    if per_slice:
        for p in doc["per_slice"]["phases"]:
            print(f"    {p['name']:<8} 2D Euler per held-out slice {p['euler_pred']} (true {p['euler_true']})")


# ---------------------------------------------------------------------------------------------------- sandstone
def sandstone_stores(work: Path) -> dict[str, Path]:
    """The 8 training and 2 held-out sandstone-versa slices as folders of links (``dirs``) and as
    ``{train,test}_{image,labels}.zarr`` in ``work``; returns the folders."""
    dirs = {name: work / name for name in ("train_images", "train_labels", "test_images", "test_labels")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for image in sorted((SANDSTONE / "images").glob("Sandstone_Versa*.tif")):
        part = "test" if any(z in image.name for z in HELD_OUT) else "train"
        for kind, src in (("images", image), ("labels", SANDSTONE / "labels" / image.name)):
            link = dirs[f"{part}_{kind}"] / image.name
            if not link.exists():
                link.symlink_to(src.resolve())
    for part in ("train", "test"):
        rockseg("convert", dirs[f"{part}_images"], work / f"{part}_image.zarr", "--overwrite")
        rockseg("convert", dirs[f"{part}_labels"], work / f"{part}_labels.zarr", "--phases", SANDSTONE_PHASES,
                "--overwrite")
    return dirs


def sandstone(work: Path, minutes: float) -> dict:
    print("== sandstone-versa: 2D model on 8 real slices, scored on 2 held-out slices", flush=True)
    dirs = sandstone_stores(work)

    test_img = np.stack([tifffile.imread(p) for p in sorted(dirs["test_images"].iterdir())])
    test_lab = np.stack([tifffile.imread(p) for p in sorted(dirs["test_labels"].iterdir())])
    otsu = np.digitize(test_img, threshold_multiotsu(test_img, classes=4)).astype(np.uint8)
    base = iou_table(otsu, test_lab, 4)
    print(f"baseline threshold_multiotsu (4 classes, on the held-out slices): mean IoU {np.mean(base):.4f} "
          f"[pore {base[0]:.3f}, clay {base[1]:.3f}, quartz {base[2]:.3f}, pyrite {base[3]:.3f}]", flush=True)

    t_tile, _ = rockseg("tile", work / "train_image.zarr", work / "train_labels.zarr", "-o", work / "tiles2d.zarr",
                        "--dims", "2", "--size", "128", "--val-fraction", "0.125", "--overwrite")
    t_train, out = rockseg("train", work / "tiles2d.zarr", "-o", work / "sandstone-2d.pt", "--dims", "2",
                           "--batch-size", "8", "--lr", "2e-3", "--max-minutes", minutes, "--device", "cpu",
                           "--overwrite", quiet=False)
    rockseg("predict", work / "test_image.zarr", "-m", work / "sandstone-2d.pt", "-o", work / "test_pred.zarr",
            "--device", "cpu", "--overwrite")
    _, out = rockseg("score", work / "test_pred.zarr", work / "test_labels.zarr", "--json", "--per-slice", "z")
    doc = json.loads(out)
    print(f"tile + train: {(t_tile + t_train) / 60:.1f} min (limit 15)")
    print_score("sandstone-versa 2D model on held-out slices z=100, 300", doc, per_slice=True)
    return doc


# ---------------------------------------------------------------------------------------------------- berea
def simulated_berea(labels: np.ndarray, seed: int = 0, noise: float = NOISE) -> np.ndarray:
    """A hard simulated micro-CT (uint8) of a pore (1) / grain (0) volume.

    Grain grey 150, pore 60 before artefacts; Gaussian partial-volume blur of sigma :data:`BLUR` voxels;
    beam-hardening cupping darkening the slice centre by 25% against the corners (a single global threshold cannot
    fit both); rings of amplitude 10 grey levels; white noise of standard deviation ``noise`` grey levels.

    The blur sets a ceiling on what any segmentation can recover of Berea's thin throats: thresholding the
    noise-free blurred labels at 0.5 gives a pore IoU of 0.976 at sigma 0.8, 0.944 at 1.0 and 0.911 at 1.2 on
    the test half (the benchmark prints the figure for :data:`BLUR`). Sigma 0.8 is a sharp but real scanner.

    The noise is set against the one real scan the project has, sandstone-versa, measured the same way on both
    by :func:`contrast_to_noise` (the benchmark prints the figures). The real scan has a pore-quartz contrast of
    114 grey levels, an interior standard deviation of 15 (contrast-to-noise 7.5) and a voxel-to-voxel noise
    of 5.5 (21). The default noise of 20 (interior 3.5, voxel 3.7) is the headline: a scan over five times
    noisier voxel to voxel than the real one, at the hard end of what labs meet. ``noise=12`` (interior 5.2, voxel
    6.2) is easier and was once the default; it is kept only as an option, since a benchmark eased until it
    passes measures nothing.
    """
    from rockseg.synthetic import simulate_ct

    return simulate_ct(labels.astype(np.uint8), seed=seed, blur=BLUR, noise=noise, grey=(150.0, 60.0),
                       clay_texture=0.0, cupping=0.25, rings=10.0)


def contrast_to_noise(image: np.ndarray, labels: np.ndarray, dark: int, bright: int,
                      planes: bool) -> tuple[float, float, float]:
    """(contrast, interior standard deviation, voxel-to-voxel noise) of two phases of a labelled image.

    Interior: voxels at least 3 voxels from any other phase (in-plane when ``planes``: the slices of a 2D stack
    are not neighbours), so partial volume does not count as noise. Contrast: the difference of the two phases'
    interior means. Interior standard deviation: the larger of the two phases' (it holds shading and texture as
    well as noise). Voxel-to-voxel noise: the standard deviation of the difference of two neighbours along x,
    divided by the square root of 2 (white noise of that deviation gives the same figure; shading does not).
    """
    from scipy.ndimage import binary_erosion

    img = image.astype(np.float64)
    reach = np.ones((1, 7, 7) if planes else (7, 7, 7), bool)
    stats = []
    for phase in (dark, bright):
        inner = binary_erosion(labels == phase, structure=reach)
        pairs = inner[..., 1:] & inner[..., :-1]
        step = (img[..., 1:] - img[..., :-1])[pairs]
        stats.append((img[inner].mean(), img[inner].std(), step.std() / np.sqrt(2)))
    (m0, s0, w0), (m1, s1, w1) = stats
    return float(m1 - m0), float(max(s0, s1)), float(max(w0, w1))


def print_contrast(title: str, figures: tuple[float, float, float]) -> None:
    contrast, interior, voxel = figures
    ratio = lambda noise: f"{contrast / noise:.1f}" if noise > 0 else "no noise"  # noqa: E731
    print(f"{title}: contrast {contrast:.0f} grey levels, interior std {interior:.1f} (contrast-to-noise "
          f"{ratio(interior)}), voxel-to-voxel noise {voxel:.1f} ({ratio(voxel)})", flush=True)


def blur_ceiling(truth: np.ndarray) -> tuple[float, int]:
    """Pore IoU and pore Euler number of the noise-free blurred labels thresholded at 0.5 (no artefacts)."""
    from scipy.ndimage import gaussian_filter

    seen = gaussian_filter(truth.astype(np.float32), BLUR) > 0.5
    pore = truth == 1
    return float((seen & pore).sum() / (seen | pore).sum()), int(euler_number(seen, connectivity=3))


def berea(work: Path, minutes_3d: float, minutes_2d: float, berea_dims: tuple[int, ...] = (3, 2),
          noise: float = NOISE) -> dict:
    print("== berea-400: simulated CT of a real pore/grain volume; train on z < 200, score on z >= 200", flush=True)
    truth = tifffile.imread(BEREA)
    image_tif = work / f"berea_ct_blur{BLUR}_noise{noise:g}.tif"
    if not image_tif.exists():
        tifffile.imwrite(image_tif, simulated_berea(truth, noise=noise), compression="zlib")
    half = truth.shape[0] // 2
    rockseg("convert", image_tif, work / "berea_train_image.zarr", "--crop", f"0:{half},:,:", "--overwrite")
    rockseg("convert", BEREA, work / "berea_train_labels.zarr", "--crop", f"0:{half},:,:",
            "--phases", "0=grain,1=pore", "--overwrite")
    rockseg("convert", image_tif, work / "berea_test_image.zarr", "--crop", f"{half}:,:,:", "--overwrite")
    rockseg("convert", BEREA, work / "berea_test_labels.zarr", "--crop", f"{half}:,:,:",
            "--phases", "0=grain,1=pore", "--overwrite")

    test_img = tifffile.imread(image_tif)[half:]
    test_truth = truth[half:]
    if SANDSTONE.exists():
        print_contrast("real scan sandstone-versa, pore vs quartz",
                       contrast_to_noise(tifffile.imread(SANDSTONE / "slices_images.tif"),
                                         tifffile.imread(SANDSTONE / "slices_labels.tif"), 0, 2, planes=True))
    print_contrast(f"simulated CT (noise {noise:g}), test half, pore vs grain",
                   contrast_to_noise(test_img, test_truth, 1, 0, planes=False))
    otsu = (test_img < threshold_otsu(test_img)).astype(np.uint8)
    iou = iou_table(otsu, test_truth, 2)[1]
    e_true = euler_number(test_truth == 1, connectivity=3)
    print(f"baseline Otsu threshold on the test half: pore IoU {iou:.4f}, pore Euler "
          f"{euler_number(otsu == 1, connectivity=3)} (true {e_true})", flush=True)
    ceiling, e_ceiling = blur_ceiling(test_truth)
    print(f"reference: the noise-free blurred labels (sigma {BLUR}) thresholded at 0.5: pore IoU {ceiling:.4f}, "
          f"pore Euler {e_ceiling}", flush=True)

    docs = {}
    # Epochs that fit the minutes on this 2-core CPU (about 160 s per 3D epoch, 70 s per 2D epoch), so that the
    # exponential schedule reaches its floor by the end: the last epochs at a low rate refine the boundaries.
    recipes = {3: (48, minutes_3d, max(1, int(minutes_3d * 60 / 160))),
               2: (128, minutes_2d, max(1, int(minutes_2d * 60 / 70)))}
    for dims in berea_dims:
        size, minutes, epochs = recipes[dims]
        tiles, model, pred = (work / f"berea_tiles{dims}d.zarr", work / f"berea-{dims}d.pt",
                              work / f"berea_pred{dims}d.zarr")
        t_tile, _ = rockseg("tile", work / "berea_train_image.zarr", work / "berea_train_labels.zarr", "-o", tiles,
                            "--dims", dims, "--size", size, "--overwrite")
        t_train, _ = rockseg("train", tiles, "-o", model, "--dims", dims, "--batch-size", 4 if dims == 3 else 8,
                             "--lr", "2e-3", "--schedule", "exp", "--min-lr", "1e-4", "--epochs", epochs,
                             "--max-minutes", minutes, "--device", "cpu", "--overwrite", quiet=False)
        t_pred, _ = rockseg("predict", work / "berea_test_image.zarr", "-m", model, "-o", pred, "--device", "cpu",
                            "--overwrite")
        _, out = rockseg("score", pred, work / "berea_test_labels.zarr", "--json")
        doc = json.loads(out)
        print(f"tile + train {(t_tile + t_train) / 60:.1f} min, predict {t_pred:.0f} s")
        print_score(f"berea-400 simulated CT, {dims}D model, test half", doc, per_slice=False)
        docs[dims] = doc
    return docs


# ------------------------------------------------------------------------------------------------ realistic
#: The hard scanner of the realistic cases: contrast-to-noise 4.5 between adjacent phases, noise correlated over
#: 0.7 voxels, blur 1.0, 25 % cupping, rings, 8-bit (rockseg.synthetic.scan.ScanOptions' defaults).
HARD = ScanOptions()
#: A second hard scanner, outside the shipped model's training ranges in cupping and noise correlation: 16-bit.
HARD16 = ScanOptions(bits=16, grey_scale=150.0, grey_offset=8000.0, cnr=4.0, blur=1.3, noise_correlation=1.2,
                     cupping=0.35, rings=0.8)
#: A good scan: contrast-to-noise 8, sharper, no correlation, 8-bit.
MILD = ScanOptions(cnr=8.0, blur=0.8, noise_correlation=0.0, cupping=0.1, rings=0.2)
#: HARD without noise, cupping or rings (only the blur and the rim): the same recipe on it measures what the
#: network and the time allow when the scan is perfect, a ceiling for the HARD case.
NOISE_FREE = ScanOptions(cnr=1e9, noise_correlation=0.0, cupping=0.0, rings=0.0)
SCANNERS = {"hard": HARD, "noise-free": NOISE_FREE}
SCAN_PHASE_NAMES = "0=pore,1=rim,2=solid"


def geometry(name: str) -> np.ndarray:
    """Pore mask of a real rock: ``berea`` (400^3) or ``icl`` (250 x 300 x 300, both fluids are pore)."""
    if name == "berea":
        return tifffile.imread(BEREA) == 1
    return tifffile.imread(ICL) <= 1


def write_case(work: Path, name: str, image: np.ndarray, labels: np.ndarray, phases: str) -> tuple[Path, Path]:
    """image.zarr and labels.zarr of one case, through ``rockseg convert`` as a user would (from .npy)."""
    paths = []
    for kind, data in (("image", image), ("labels", labels)):
        npy, store = work / f"{name}-{kind}.npy", work / f"{name}-{kind}.zarr"
        np.save(npy, data)
        extra = ("--phases", phases) if kind == "labels" else ()
        rockseg("convert", npy, store, *extra, "--overwrite")
        npy.unlink()
        paths.append(store)
    return paths[0], paths[1]


def median_otsu(image: np.ndarray, classes: int) -> np.ndarray:
    """The classical baseline: a 3x3x3 median filter, then multi-Otsu thresholds (Otsu's for two classes)."""
    from scipy.ndimage import median_filter

    smooth = median_filter(image, size=3)
    if classes == 2:
        return (smooth > threshold_otsu(smooth)).astype(np.uint8)
    return np.digitize(smooth, threshold_multiotsu(smooth, classes=classes)).astype(np.uint8)


def physics_table(title: str, pred: np.ndarray, truth: np.ndarray, names: list[str]) -> dict:
    """Per-phase IoU and 26-connected Euler numbers of an in-memory segmentation, printed and returned."""
    ious = iou_table(pred, truth, len(names))
    rows = {}
    for k, name in enumerate(names):
        e_pred, e_true = euler_number(pred == k, connectivity=3), euler_number(truth == k, connectivity=3)
        rows[name] = {"iou": ious[k], "euler_pred": int(e_pred), "euler_true": int(e_true),
                      "euler_error": abs(e_pred - e_true) / max(1, abs(e_true))}
    print(f"{title}: " + "; ".join(f"{n} IoU {r['iou']:.3f}, Euler {r['euler_pred']} (true {r['euler_true']}, "
                                    f"{100 * r['euler_error']:.0f}% off)" for n, r in rows.items()), flush=True)
    return rows


def noise_free_reference(labels: np.ndarray, options: ScanOptions) -> np.ndarray:
    """A segmentation that knows the simulation: the noise- and artefact-free blurred phase image cut at the
    midpoints between the phase grey values. What thresholds would get from a perfect scanner of this blur; not a
    ceiling for a network, which can learn to undo some of the blur (a thin rim blurred between pore and solid is
    lost to thresholds but not to a model that has seen its profile)."""
    from scipy.ndimage import gaussian_filter

    grey = np.array([0.0, options.rim_level, 1.0], np.float32)
    seen = gaussian_filter(grey[labels], options.blur)
    return np.digitize(seen, [options.rim_level / 2, (1 + options.rim_level) / 2]).astype(np.uint8)

def realistic(work: Path, minutes: float, recipe: tuple[str, ...] = (), scanner: str = "hard",
              train_half: str = "lower") -> dict:
    """Issue 15's own hard case: three phases (pore, a thin rim, solid) on the real Berea geometry, a model trained
    the user's way on the lower half, scored on the upper half and on a geometry it never saw (icl-mixedwet).

    ``train_half="test"`` trains on the upper half itself, the one scored: a ceiling of the recipe on this scan
    (what a model that has seen the scored voxels gets), not a figure of generalisation."""
    options = SCANNERS[scanner]
    print(f"== realistic: Berea 256^3 with a micro-porous rim, {scanner} scanner {options}", flush=True)
    pore = geometry("berea")[:256, 72:328, 72:328]
    image, labels = realistic_scan(pore, options, seed=11)
    img, lab = write_case(work, "real-berea", image, labels, SCAN_PHASE_NAMES)
    print_contrast("realistic Berea, pore vs solid (twice the step between adjacent phases)",
                   contrast_to_noise(image, labels, 0, 2, planes=False))
    names, half = list(SCAN_PHASES.values()), 128
    test = (slice(half, None),)
    physics_table("  median + multi-Otsu, test half", median_otsu(image[test], 3), labels[test], names)
    physics_table("  noise-free reference (the blurred phases without noise or artefacts, cut at the midpoints)",
                  noise_free_reference(labels, options)[test], labels[test], names)
    tiles, model, pred = work / "real-tiles.zarr", work / "real-model.pt", work / "real-pred.zarr"
    region = f"0:{half},:,:" if train_half == "lower" else f"{half}:256,:,:"
    t_tile, _ = rockseg("tile", img, lab, "-o", tiles, "--dims", 3, "--size", 64, "--crop", region, "--overwrite")
    t_train, _ = rockseg("train", tiles, "-o", model, "--dims", 3, "--max-minutes", minutes, *recipe,
                         "--overwrite", quiet=False)
    t_pred, _ = rockseg("predict", img, "-m", model, "-o", pred, "--overwrite")  # scored on the test half only
    _, out = rockseg("score", pred, lab, "--crop", f"{half}:256,0:256,0:256", "--json")
    print(f"tile + train {(t_tile + t_train) / 60:.1f} min (recipe: {' '.join(recipe) or 'the defaults'}), "
          f"predict {t_pred:.0f} s")
    print_score(f"  rockseg 3D model, test half{' (trained on it: a ceiling)' if train_half == 'test' else ''}, "
                f"specks {model_specks(model)}", json.loads(out), per_slice=False)
    without_specks("  the same, without removing specks (--specks 0)", img, lab, model, pred,
                   f"{half}:256,0:256,0:256")
    if ICL.exists():
        other = geometry("icl")[:, 22:278, 22:278]
        image2, labels2 = realistic_scan(other, options, seed=12)
        img2, lab2 = write_case(work, "real-icl", image2, labels2, SCAN_PHASE_NAMES)
        physics_table("  unseen geometry (icl-mixedwet), median + multi-Otsu", median_otsu(image2, 3), labels2, names)
        pred2 = work / "real-icl-pred.zarr"
        rockseg("predict", img2, "-m", model, "-o", pred2, "--overwrite")
        _, out = rockseg("score", pred2, lab2, "--json")
        print_score("  the same model on the unseen geometry (icl-mixedwet)", json.loads(out), per_slice=False)
        without_specks("  the same, without removing specks (--specks 0)", img2, lab2, model, pred2)
    return {}


def model_specks(model: str | Path | None) -> int:
    """The speck size ``rockseg predict`` applies for a model file or shipped name (None: the default)."""
    from rockseg.models import read_model_file, resolve_model

    return int((read_model_file(resolve_model(model)).get("postprocess") or {}).get("specks", 0))


def betti(pore: np.ndarray) -> tuple[int, int, int]:
    """Components, tunnels and cavities of a pore mask (26-connected pore, 6-connected solid: the pair the pore's
    Euler number counts, which is components - tunnels + cavities)."""
    from skimage.measure import label

    components = int(label(pore, connectivity=3).max())
    solid = label(~pore, connectivity=1)
    faces = [solid[0], solid[-1], solid[:, 0], solid[:, -1], solid[:, :, 0], solid[:, :, -1]]
    touching = np.unique(np.concatenate([f.ravel() for f in faces]))
    cavities = int(solid.max()) - int((touching > 0).sum())
    return components, components + cavities - int(euler_number(pore, connectivity=3)), cavities


def print_betti(title: str, preds: dict[str, Path], lab: Path, z0: int = 0) -> None:
    """Why a pore Euler number is off: the components, tunnels and cavities of each prediction and of the truth
    (from z = ``z0`` on)."""
    import zarr

    pores = {"truth": np.asarray(zarr.open_array(str(lab), mode="r")[z0:]) == 0}
    pores.update({name: np.asarray(zarr.open_array(str(p), mode="r")[z0:]) == 0 for name, p in preds.items()})
    print_topology(title, pores)


def print_topology(title: str, pores: dict[str, np.ndarray]) -> None:
    """One line: the components, tunnels and cavities of each named pore mask."""
    print(f"{title}: pore components / tunnels / cavities: "
          + "; ".join(f"{name} {' / '.join(map(str, betti(pore)))}" for name, pore in pores.items()), flush=True)


def without_specks(title: str, img: Path, lab: Path, model: str | Path | None, pred: Path,
                   crop: str | None = None) -> None:
    """Predict and score again with ``--specks 0``: what removing the model's specks changed, and why."""
    out = pred.with_name(pred.name.replace("-pred", "-pred-raw"))
    rockseg("predict", img, "-o", out, "--specks", 0, "--overwrite", *(("-m", model) if model else ()))
    _, doc = rockseg("score", out, lab, "--json", *(("--crop", crop) if crop else ()))
    print_score(title, json.loads(doc), per_slice=False)
    z0 = int(crop.split(":")[0]) if crop else 0
    print_betti("    topology", {"specks removed": pred, "--specks 0": out}, lab, z0)


def shipped(work: Path, model: str | None = None) -> list[dict]:
    """The shipped pore/solid model (``rockseg predict VOLUME``, no options) on rocks and scans it never saw.

    ``model``: another model file or shipped name to measure instead (``predict -m``), e.g. a candidate default.
    The last case is rockseg's own clay-rich synthetic rock (thick clay of intermediate grey, which counts as
    solid), rendered by ``simulate_ct`` as the demo and the tests render it, with a seed no training used.
    """
    print(f"== {'model ' + model if model else 'shipped model'} on held-out geometries and scanners (pore/solid; "
          "the rim and clay count as solid)", flush=True)
    cases = [("icl", "HARD", HARD), ("icl", "HARD16", HARD16), ("icl", "MILD", MILD),
             ("berea", "HARD", HARD), ("berea", "HARD16", HARD16), ("synthetic", "simulate_ct", None)]
    rows = []
    for rock, quality, options in cases:
        if rock == "icl" and not ICL.exists():
            continue
        if rock == "synthetic":
            image, labels = synthetic_rock((96, 160, 160), seed=11)
        else:
            pore = geometry(rock)
            pore = pore[:, 22:278, 22:278] if rock == "icl" else pore[272:, 72:328, 72:328]  # Berea: z >= 272 only
            image, labels = realistic_scan(pore, options, seed=21)
        truth = (labels != 0).astype(np.uint8)  # 0 pore, 1 solid
        name = f"shipped-{rock}-{quality}"
        img, lab = write_case(work, name, image, truth, "0=pore,1=solid")
        baseline = physics_table(f"  {rock} {quality}: median + Otsu", median_otsu(image, 2), truth, ["pore", "solid"])
        if options is not None:  # simulate_ct has no such reference
            reference = (noise_free_reference(labels, options) != 0).astype(np.uint8)
            physics_table(f"  {rock} {quality}: noise-free reference (what thresholds of a perfect scanner of this "
                          "blur get)", reference, truth, ["pore", "solid"])
            print_topology("    topology", {"truth": truth == 0, "reference": reference == 0})
        pred = work / f"{name}-pred.zarr"
        seconds, out = rockseg("predict", img, "-o", pred, "--overwrite", *(("-m", model) if model else ()))
        rate = re.search(r"\(([0-9.]+) Mvoxel/s\)", out)
        _, doc = rockseg("score", pred, lab, "--json")
        doc = json.loads(doc)
        print_score(f"  {rock} {quality}: {'model' if model else 'shipped model'} "
                    f"({rate.group(1) if rate else '?'} Mvoxel/s, specks {model_specks(model)})", doc, per_slice=False)
        without_specks(f"  {rock} {quality}: the same without removing specks (--specks 0)", img, lab, model, pred)
        rows.append({"rock": rock, "scan": quality, "doc": doc, "otsu": baseline})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", choices=("sandstone", "berea", "realistic", "shipped", "finetune"), default=None)
    parser.add_argument("--minutes-realistic", type=float, default=15.0,
                        help="training minutes of the realistic 3-phase case (issue 15: 15 on a 2-core CPU)")
    parser.add_argument("--scanner", choices=tuple(SCANNERS), default="hard",
                        help="the realistic case's scanner (noise-free: the same recipe's ceiling)")
    parser.add_argument("--train-half", choices=("lower", "test"), default="lower",
                        help="the realistic case's training half: lower (the benchmark), or test (the half scored: "
                        "a ceiling of the recipe on this scan)")
    parser.add_argument("--recipe", default="", help="extra train options for the realistic case, e.g. "
                        "'--loss ce+dice+cldice' (default: none, rockseg's defaults)")
    parser.add_argument("--model", default=None, help="the shipped case: measure this model file or shipped name "
                        "instead of the default (e.g. a candidate default model)")
    parser.add_argument("--minutes-finetune", type=float, default=4.0,
                        help="the finetune case: minutes per run (benchmarks/finetune.py --minutes)")
    parser.add_argument("--minutes-2d", type=float, default=12.0, help="training minutes of each 2D model")
    parser.add_argument("--minutes-3d", type=float, default=40.0, help="training minutes of the 3D model")
    parser.add_argument("--berea-dims", default="3,2", help="which berea models to train: 3, 2 or 3,2")
    parser.add_argument("--noise", type=float, default=NOISE,
                        help="noise of the simulated Berea CT in grey levels (contrast 90)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rockseg-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {work}; {os.cpu_count()} CPUs", flush=True)
    if args.only in (None, "sandstone"):
        if SANDSTONE.exists():
            sandstone(work, args.minutes_2d)
        else:
            print(f"sandstone-versa not found at {SANDSTONE}: skipped")
    if args.only in (None, "berea"):
        if BEREA.exists():
            berea(work, args.minutes_3d, args.minutes_2d, tuple(int(d) for d in args.berea_dims.split(",")),
                  noise=args.noise)
        else:
            print(f"berea-400 not found at {BEREA}: skipped")
    if args.only in (None, "realistic") and BEREA.exists():
        realistic(work, args.minutes_realistic, tuple(args.recipe.split()), args.scanner, args.train_half)
    if args.only in (None, "shipped") and BEREA.exists():
        shipped(work, args.model)
    if args.only in (None, "finetune") and BEREA.exists():
        label_less(work / "finetune", args.minutes_finetune)


def label_less(work: Path, minutes: float) -> None:
    """Issue 19's figures, as ``benchmarks/finetune.py`` measures them (its docstring says how)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import finetune

    work.mkdir(parents=True, exist_ok=True)
    paths = finetune.berea_case(work)
    finetune.finetune(work, paths, minutes, os.cpu_count() or 1)
    finetune.sparse(work, paths, minutes, os.cpu_count() or 1)
    if SANDSTONE.exists():
        finetune.pix2pix(work, minutes, os.cpu_count() or 1)


if __name__ == "__main__":
    main()
