"""Tests of rockseg.training: model file contents, reproducibility, time limit, log, checks, and learning."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage as ndi

from rockseg import training
from rockseg.errors import InputError, MissingInputError, OutputExistsError
from rockseg.models import load_model, read_model_file
from rockseg.tiling import make_tiles, read_tiles
from rockseg.training import TrainConfig, augment_batch, evaluate, iou_from_confusion, train

TINY = dict(base_channels=4, batch_size=2, epochs=1, steps_per_epoch=2, num_threads=1)


def two_phase(shape: tuple[int, ...], seed: int = 0, noise: float = 12) -> tuple[np.ndarray, np.ndarray]:
    """A grey image (uint8) and its two-phase labels: a threshold of smoothed noise, plus noise."""
    rng = np.random.default_rng(seed)
    labels = (ndi.gaussian_filter(rng.standard_normal(shape), 2) > 0).astype(np.uint8)
    image = (60 + 80 * labels + rng.normal(0, noise, shape)).clip(0, 255).astype(np.uint8)
    return image, labels


@pytest.fixture(scope="module")
def tilesets(tmp_path_factory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("tiles")
    image, labels = two_phase((32, 32, 32))
    for name, data in (("img.zarr", image), ("lab.zarr", labels)):
        zarr.create_array(str(d / name), data=data, chunks=(16, 16, 16))
    make_tiles(d / "img.zarr", d / "lab.zarr", d / "t3.zarr", dims=3, size=16, count=16,
               phases={0: "pore", 1: "grain"})
    make_tiles(d / "img.zarr", d / "lab.zarr", d / "t2.zarr", dims=2, size=16, count=48,
               phases={0: "pore", 1: "grain"})
    return {3: d / "t3.zarr", 2: d / "t2.zarr"}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_model_file(path)["state_dict"]


@pytest.mark.parametrize("dims", [2, 3])
def test_model_file_holds_the_best_model(tilesets, tmp_path, dims):
    out = tmp_path / "model.pt"
    lines: list[str] = []
    summary = train(tilesets[dims], out, config=TrainConfig(**{**TINY, "epochs": 2}), dims=dims, log=lines.append)
    payload = read_model_file(out)
    attrs, arrays = read_tiles(tilesets[dims])
    assert payload["arch"] == "unet" and payload["spatial_dims"] == dims and payload["in_channels"] == 1
    assert payload["arch_args"] == dict(spatial_dims=dims, in_channels=1, classes=2, base_channels=4, depth=3,
                                        norm="batch", act="relu")
    assert payload["phases"] == {"0": "pore", "1": "grain"}
    assert payload["normalization"] == attrs["intensity"]
    assert payload["tile"] == (64 if dims == 3 else 256) == training.tile_for(16, dims)
    assert payload["halo"] == training.halo_for(payload["tile"])
    t = payload["training"]
    assert t["epochs_run"] == 2 and t["steps"] == 4 and t["stopped"] == "epochs"
    assert t["config"]["base_channels"] == 4 and t["tiles"] == str(tilesets[dims].resolve())
    assert summary["best_epoch"] == t["best_epoch"] and summary["model"] == str(out) and summary["epochs"] == 2

    # The weights written are those of the best epoch: the reloaded model scores exactly what the log says.
    model = load_model(out)
    confusion = evaluate(model, arrays["val/image"], arrays["val/labels"], stats=attrs["intensity"], classes=2,
                         device=torch.device("cpu"), batch_size=8)
    iou = iou_from_confusion(confusion)
    assert round(float(np.nanmean(iou)), 6) == t["best_val_mean_iou"]
    log = [json.loads(line) for line in (tmp_path / "model.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and len(lines) == 2
    assert log[t["best_epoch"] - 1]["val_mean_iou"] == t["best_val_mean_iou"]
    assert t["best_val_mean_iou"] == max(r["val_mean_iou"] for r in log)
    assert {"loss", "val_iou", "seconds", "partial"} <= log[0].keys()
    assert [p["name"] for p in log[0]["val_iou"]] == ["pore", "grain"]

    # Reloading twice gives the same network, in eval mode, with outputs of the right shape.
    x = torch.rand((1, 1) + (16,) * dims)
    with torch.no_grad():
        y1, y2 = model(x), load_model(out)(x)
    assert y1.shape == (1, 2) + (16,) * dims and torch.equal(y1, y2)


def test_same_seed_same_weights(tilesets, tmp_path):
    cfg = TrainConfig(**{**TINY, "steps_per_epoch": 3})
    train(tilesets[2], tmp_path / "a.pt", config=cfg)
    train(tilesets[2], tmp_path / "b.pt", config=cfg)
    train(tilesets[2], tmp_path / "c.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": 3, "seed": 1}))
    a, b, c = weights(tmp_path / "a.pt"), weights(tmp_path / "b.pt"), weights(tmp_path / "c.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_max_minutes_stops_and_keeps_the_best(tilesets, tmp_path):
    out = tmp_path / "m.pt"
    start = time.monotonic()
    summary = train(tilesets[3], out, config=TrainConfig(**{**TINY, "epochs": 10_000, "steps_per_epoch": 10_000,
                                                           "max_minutes": 0.01}))
    assert time.monotonic() - start < 30
    assert summary["stopped"] == "time" and summary["epochs_run"] >= 1
    assert summary["steps"] < 10_000
    log = (tmp_path / "m.log.jsonl").read_text().splitlines()
    assert len(log) == summary["epochs_run"]
    assert json.loads(log[-1])["partial"] is True  # cut short within the epoch, not only between epochs
    assert read_model_file(out)["training"]["best_val_mean_iou"] == summary["best_val_mean_iou"]


@pytest.mark.parametrize("loss", ["dice", "ce+dice"])
def test_other_losses_train(tilesets, tmp_path, loss):
    s = train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "loss": loss, "steps_per_epoch": 1}),
              progress=True)
    assert s["config"]["loss"] == loss and (tmp_path / "m.pt").exists()


def test_soft_dice_and_iou_by_hand():
    target = torch.tensor([[0, 1, 1, 0]])
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 50
    assert float(training._soft_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros((1, 2, 4))
    # p = 0.5 everywhere: each class has intersection 1, sums 2 + 2 -> dice (2*1 + 1) / (4 + 1) = 0.6
    assert float(training._soft_dice_loss(uniform, target)) == pytest.approx(0.4)
    conf = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(3 / 6) and iou[1] == pytest.approx(4 / 7) and np.isnan(iou[2])


@pytest.mark.parametrize("shape", [(6, 5, 5), (4, 3, 4, 4)])
def test_augment_moves_images_and_labels_together(shape):
    images = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    labels = (images % 7).astype(np.uint8)
    img, lab = augment_batch(images, labels, np.random.default_rng(0))
    np.testing.assert_array_equal(lab, img % 7)
    spatial = len(shape) - 1
    seen = set()
    for i in range(shape[0]):
        variants = []
        for flips in itertools.product([False, True], repeat=spatial):
            axes = tuple(a for a, f in enumerate(flips) if f)
            flipped = np.flip(images[i], axes) if axes else images[i]
            variants += [np.rot90(flipped, k, axes=(-2, -1)) for k in range(4)]
        match = [j for j, v in enumerate(variants) if np.array_equal(v, img[i])]
        assert match, "each tile must be a flip/rotation of its input"
        seen.add(match[0])
    assert len(seen) > 1


def test_checks_before_training(tilesets, tmp_path):
    out = tmp_path / "m.pt"
    cases = [
        (dict(config=TrainConfig(**TINY), dims=3), tilesets[2], InputError, "--dims 3 does not match"),
        (dict(config=TrainConfig(**{**TINY, "depth": 5})), tilesets[2], InputError, "--depth 5 needs a multiple of 32"),
        (dict(config=TrainConfig(**{**TINY, "loss": "dic"})), tilesets[2], InputError, "did you mean 'dice'"),
        (dict(config=TrainConfig(**{**TINY, "arch": "Unet"})), tilesets[2], InputError, "did you mean 'unet'"),
        (dict(config=TrainConfig(**{**TINY, "lr": -1.0})), tilesets[2], InputError, "--lr"),
        (dict(config=TrainConfig(**{**TINY, "max_minutes": 0})), tilesets[2], InputError, "--max-minutes"),
        (dict(config=TrainConfig(**{**TINY, "batch_size": 0})), tilesets[2], InputError, "--batch-size"),
        (dict(config=TrainConfig(**{**TINY, "device": "tpu"})), tilesets[2], InputError, "--device 'tpu'"),
        (dict(config=TrainConfig(**TINY)), tmp_path / "none.zarr", MissingInputError, "does not exist"),
        (dict(config=TrainConfig(**TINY)), tilesets[2].parent / "img.zarr", InputError, "not a rockseg tile set"),
    ]
    for kwargs, tiles, exc, match in cases:
        with pytest.raises(exc, match=match):
            train(tiles, out, **kwargs)
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train(tilesets[2], out, config=TrainConfig(**TINY))
    assert out.read_bytes() == b"old"
    train(tilesets[2], out, config=TrainConfig(**TINY), overwrite=True)
    assert read_model_file(out)["spatial_dims"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_missing_is_a_clear_error(tilesets, tmp_path):
    with pytest.raises(InputError, match="no CUDA GPU.*--device cpu"):
        train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "device": "cuda:0"}))
    assert training.resolve_device("auto") == torch.device("cpu")


def test_halo_and_log_path():
    assert [training.halo_for(s) for s in (8, 16, 48, 64, 256)] == [2, 2, 8, 10, 42]
    assert training.log_path_for("runs/model.pt") == Path("runs/model.log.jsonl")
    assert training.log_path_for("model") == Path("model.log.jsonl")


def test_learns_a_two_phase_problem(tmp_path):
    image, labels = two_phase((8, 48, 48), seed=4, noise=15)
    for name, data in (("i.zarr", image), ("l.zarr", labels)):
        zarr.create_array(str(tmp_path / name), data=data, chunks=(8, 48, 48))
    make_tiles(tmp_path / "i.zarr", tmp_path / "l.zarr", tmp_path / "t.zarr", dims=2, size=16, count=64)
    s = train(tmp_path / "t.zarr", tmp_path / "m.pt",
              config=TrainConfig(base_channels=4, batch_size=8, epochs=5, steps_per_epoch=8, lr=1e-2, num_threads=1))
    assert s["best_val_mean_iou"] > 0.8, s


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda(tilesets, tmp_path):
    s = train(tilesets[3], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "device": "cuda"}))
    assert s["device"].startswith("cuda")
    assert load_model(tmp_path / "m.pt")(torch.zeros((1, 1, 16, 16, 16))).shape == (1, 2, 16, 16, 16)
