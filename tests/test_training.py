"""Tests of rockseg.training: model file contents, reproducibility, time limit, log, checks, and learning."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from scipy import ndimage as ndi

from rockseg import models, training
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


# ------------------------------------------------------------------------------------------------ losses
def test_loss_terms_by_hand():
    target = torch.tensor([[0, 1, 1, 0]])
    uniform = torch.zeros((1, 2, 4))
    # p = 0.5 everywhere. Soft IoU per class: intersection 2 * 0.5 = 1, union 2 + 2 - 1 = 3 -> (1 + 1) / (3 + 1).
    assert float(training.soft_iou(uniform, target)) == pytest.approx(0.5)
    assert float(training.loss_function("logiou")(uniform, target)) == pytest.approx(np.log(2))
    assert float(training.loss_function("logiou", iou_alpha=0.5)(uniform, target)) == pytest.approx(0.5 * np.log(2))
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 50
    assert float(training.loss_function("logiou")(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    # Focal loss with p_t = 0.5 everywhere: (1 - 0.5)**2 * log 2 = log(2) / 4; gamma 0 is cross-entropy, log 2.
    assert float(training.loss_function("focal")(uniform, target)) == pytest.approx(np.log(2) / 4)
    assert float(training.loss_function("focal", focal_gamma=0)(uniform, target)) == pytest.approx(np.log(2))
    # One voxel with logits (ln 3, 0): p = (0.75, 0.25). Target 1: focal = -(0.75**2) log 0.25.
    logits = torch.tensor([[[np.log(3.0)], [0.0]]], dtype=torch.float32)
    t1 = torch.tensor([[1]])
    assert float(training.focal_loss(logits, t1, gamma=2)) == pytest.approx(-(0.75**2) * np.log(0.25), rel=1e-6)
    assert float(training.focal_loss(logits, t1, gamma=1)) == pytest.approx(-0.75 * np.log(0.25), rel=1e-6)
    # Sums are sums of their terms, in any order; ce+logiou = CE - alpha log(soft IoU).
    rng = torch.Generator().manual_seed(0)
    x, y = torch.randn((2, 3, 5, 5), generator=rng), torch.randint(0, 3, (2, 5, 5), generator=rng)
    ce, dice = F.cross_entropy(x, y), training.soft_dice_loss(x, y)
    focal, iou = training.focal_loss(x, y, gamma=2.0), training.soft_iou(x, y)
    torch.testing.assert_close(training.loss_function("ce+logiou", iou_alpha=0.3)(x, y), ce - 0.3 * torch.log(iou))
    torch.testing.assert_close(training.loss_function("dice+focal")(x, y), focal + dice)
    torch.testing.assert_close(training.loss_function("focal+dice")(x, y), focal + dice)
    torch.testing.assert_close(training.loss_function(" CE + Dice ")(x, y), ce + dice)
    torch.testing.assert_close(training.loss_function("ce+dice+focal+logiou")(x, y), ce + dice + focal - torch.log(iou))


def test_weighted_focal_with_gamma_0_is_weighted_cross_entropy():
    rng = torch.Generator().manual_seed(1)
    x, y = torch.randn((3, 4, 6, 6), generator=rng), torch.randint(0, 4, (3, 6, 6), generator=rng)
    w = [1.0, 2.0, 5.0, 5.0]
    torch.testing.assert_close(training.loss_function("focal", focal_gamma=0, class_weights=w)(x, y),
                               F.cross_entropy(x, y, weight=torch.tensor(w)))
    torch.testing.assert_close(training.loss_function("ce", class_weights=w)(x, y),
                               F.cross_entropy(x, y, weight=torch.tensor(w)))


@pytest.mark.parametrize("kind", ["ce", "focal"])
def test_class_weights_move_the_gradient_toward_the_weighted_class(kind):
    target = torch.tensor([[0, 0, 1, 1]])
    logits = torch.tensor([[[0.3, -0.2, 0.1, 0.4], [0.0, 0.5, -0.3, 0.2]]])

    def grads(weights):
        x = logits.clone().requires_grad_(True)
        training.loss_function(kind, class_weights=weights)(x, target).backward()
        return x.grad[0].abs().sum(0)  # gradient size per voxel

    plain, weighted = grads(None), grads([1.0, 5.0])
    # Up-weighting class 1 multiplies the pull of its voxels by 5 relative to the class-0 voxels.
    ratio_plain = plain[2:].sum() / plain[:2].sum()
    ratio_weighted = weighted[2:].sum() / weighted[:2].sum()
    assert float(ratio_weighted / ratio_plain) == pytest.approx(5.0, rel=1e-5)


def test_parse_loss_and_class_weights():
    assert training.parse_loss("ce+dice") == ("ce", "dice") and training.parse_loss("Focal") == ("focal",)
    for bad, match in (("cee", "did you mean 'ce'"), ("ce+ce", "twice"), ("ce+", "is not a loss"),
                       ("logio", "did you mean 'logiou'")):
        with pytest.raises(InputError, match=match):
            training.parse_loss(bad)
    # Inverse frequency normalised to mean 1: counts 30, 10 -> 40/30, 40/10 -> 0.5, 1.5.
    assert training.parse_class_weights("balanced", counts=[30, 10]) == pytest.approx([0.5, 1.5])
    assert training.parse_class_weights("balanced", counts=[30, 0, 10]) == pytest.approx([0.5, 1.0, 1.5])
    assert training.parse_class_weights("1,2,5,5", classes=4) == [1.0, 2.0, 5.0, 5.0]
    assert training.parse_class_weights(None) is None
    with pytest.raises(InputError, match="gives 3 weights but tile set t.zarr has 4 classes"):
        training.parse_class_weights("1,2,5", classes=4, tiles="t.zarr")
    for bad in ("1,x", "-1,2", "0,0"):
        with pytest.raises(InputError, match="--class-weights"):
            training.parse_class_weights(bad)


# ------------------------------------------------------------------------------------------------ data
def test_per_source_normalisation_equals_normalize_tile_by_tile():
    from rockseg.io.intensity import normalize

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 4, 4)).astype(np.uint8)
    stats = [{"p_low": 10.0, "p_high": 200.0}, {"p_low": 50.0, "p_high": 50.0, "std": 7.0}, {"p_low": 0.3, "p_high": 1.7}]
    source = np.array([0, 1, 2, 2, 1, 0], np.uint8)
    lo, inv = training.tile_normalization(stats, source, 6)
    out = training.normalize_tiles(images, lo, inv)
    for i in range(6):
        np.testing.assert_array_equal(out[i], normalize(images[i], stats[source[i]]))
    attrs = {"intensity": stats[0], "sources": [{"intensity": s} for s in stats]}
    arrays = {"train/image": images, "train/labels": images % 2, "train/source": source,
              "val/image": images[:2], "val/labels": images[:2] % 2, "val/source": np.array([2, 1], np.uint8)}
    parts, first = training._read_parts("t.zarr", attrs, arrays)
    np.testing.assert_array_equal(parts["train"].lo, lo)
    np.testing.assert_array_equal(parts["val"].inv, inv[[2, 1]])
    assert first == stats
    # A version-1 set: no sources, every tile normalised with attrs["intensity"].
    parts, first = training._read_parts("t.zarr", {"intensity": stats[1]},
                                        {k: v for k, v in arrays.items() if not k.endswith("source")})
    assert first == [stats[1]] and (parts["train"].inv == np.float32(1 / 7)).all()
    with pytest.raises(InputError, match="refers to source 5"):
        training._read_parts("t.zarr", attrs, {**arrays, "train/source": np.array([5, 0, 0, 0, 0, 0], np.uint8)})


def test_two_sources_train_with_their_own_statistics(tmp_path):
    image, labels = two_phase((8, 32, 32), seed=2)
    bright = (image.astype(np.uint16) * 100 + 5000).astype(np.uint16)  # same rock, another scanner's grey values
    for name, data in (("a.zarr", image), ("b.zarr", bright), ("l.zarr", labels)):
        zarr.create_array(str(tmp_path / name), data=data, chunks=(8, 32, 32))
    make_tiles([tmp_path / "a.zarr", tmp_path / "b.zarr"], [tmp_path / "l.zarr", tmp_path / "l.zarr"],
               tmp_path / "t.zarr", dims=2, size=16, count=32)
    attrs, arrays = read_tiles(tmp_path / "t.zarr")
    assert len(attrs["sources"]) == 2 and set(np.unique(arrays["train/source"])) == {0, 1}
    parts, _ = training._read_parts(tmp_path / "t.zarr", attrs, arrays)
    x = training.normalize_tiles(parts["train"].image, parts["train"].lo, parts["train"].inv)
    # Both sources land on the same normalised scale: the 16-bit tiles are not all far above 1.
    for s in (0, 1):
        assert 0.2 < float(np.median(x[arrays["train/source"] == s])) < 1.2
    s = train(tmp_path / "t.zarr", tmp_path / "m.pt", config=TrainConfig(**TINY))
    assert s["tile_sources"] == 2
    assert read_model_file(tmp_path / "m.pt")["normalization"] == attrs["sources"][0]["intensity"]


def test_prefetcher_keeps_order_whatever_the_timing():
    def slow(k):
        time.sleep(0.002 * (k % 3))
        return k * k

    with training._Prefetcher(slow, range(20), threads=3, depth=4) as p:
        assert list(p) == [k * k for k in range(20)]
    with training._Prefetcher(slow, range(100), threads=2) as p:  # left early: closing does not hang
        assert next(p) == 0


# ------------------------------------------------------------------------------------------------ optimisation
@pytest.mark.parametrize("settings, lrs", [
    # exp: 1e-2 decays to min_lr 1e-4 at the last of 3 epochs
    (dict(schedule="exp", lr=1e-2, min_lr=1e-4, optimizer="sgd", weight_decay=1e-4), [1e-2, 1e-3, 1e-4]),
    # cosine, restart every 2 epochs: lr, the middle of the half cosine, lr again
    (dict(schedule="cosine", lr=1e-2, min_lr=0.0, cosine_epochs=2, optimizer="adamw"), [1e-2, 5e-3, 1e-2]),
    # warm-up over 2 epochs of 4 steps: 4/8 of lr by the end of epoch 1, all of it after
    (dict(warmup_epochs=2, lr=1e-2, steps_per_epoch=4), [5e-3, 1e-2, 1e-2]),
    (dict(schedule="plateau", patience=0, lr=1e-2), None),
])
def test_schedules_set_the_logged_learning_rate(tilesets, tmp_path, settings, lrs):
    s = train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "epochs": 3, **settings}))
    log = [json.loads(line) for line in Path(s["log"]).read_text().splitlines()]
    got = [r["lr"] for r in log]
    if lrs is not None:
        assert got == pytest.approx(lrs, rel=1e-9, abs=1e-12)
    else:  # plateau: the rate halves exactly after each epoch that did not beat the best so far
        best, want = -1.0, 1e-2
        for r, lr in zip(log, got):
            assert lr == pytest.approx(want)
            want = want if r["val_mean_iou"] > best else want / 2
            best = max(best, r["val_mean_iou"])
    assert s["config"]["schedule"] == settings.get("schedule", "none")


def test_accumulated_steps_equal_one_bigger_batch(tilesets, tmp_path):
    # Without batch statistics or augmentation, 2 passes of 2 tiles summed = 1 pass of the same 4 tiles.
    common = dict(base_channels=4, norm="none", augment="none", epochs=1, steps_per_epoch=2, num_threads=1,
                  precision="float32")  # bf16 (auto on CPUs with bf16 instructions) rounds differently per batch
    train(tilesets[2], tmp_path / "a.pt", config=TrainConfig(**common, batch_size=4))
    s = train(tilesets[2], tmp_path / "b.pt", config=TrainConfig(**common, batch_size=2, accumulate=2))
    assert s["steps"] == 2 and s["effective_batch"] == 4
    a, b = weights(tmp_path / "a.pt"), weights(tmp_path / "b.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_fraction_sets_the_epoch_length(tilesets, tmp_path):
    n_train = len(read_tiles(tilesets[2])[1]["train/image"])
    s = train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": None,
                                                                    "fraction": 0.25, "batch_size": 4}))
    assert s["steps"] == int(np.ceil(0.25 * np.ceil(n_train / 4)))
    s = train(tilesets[2], tmp_path / "n.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": None, "batch_size": 8,
                                                                    "accumulate": 2}))
    assert s["steps"] == int(np.ceil(np.ceil(n_train / 8) / 2))


def test_precision(tilesets, tmp_path):
    s = train(tilesets[2], tmp_path / "a.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": 1}))
    from rockseg.inference import cpu_has_bf16

    assert s["precision"] == ("bf16" if cpu_has_bf16() else "float32")
    s = train(tilesets[2], tmp_path / "b.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": 1, "precision": "bf16"}))
    assert s["precision"] == "bf16" and np.isfinite(s["best_val_mean_iou"])


# ------------------------------------------------------------------------------------------------ runs
RESUMABLE = dict(TINY, optimizer="adamw", schedule="cosine", cosine_epochs=3, warmup_epochs=1, augment="strong",
                 loss="focal+dice", class_weights="balanced", steps_per_epoch=2)


def test_resume_equals_a_straight_run(tilesets, tmp_path):
    straight = train(tilesets[2], tmp_path / "s.pt", config=TrainConfig(**{**RESUMABLE, "epochs": 4}))
    first = train(tilesets[2], tmp_path / "r.pt", config=TrainConfig(**{**RESUMABLE, "epochs": 2}))
    assert first["epochs_run"] == 2 and first["resumed_from"] is None
    lines: list[str] = []
    resumed = train(tilesets[2], tmp_path / "r.pt", config=TrainConfig(**{**RESUMABLE, "epochs": 4}), resume=True,
                    log=lines.append)
    assert resumed["resumed_from"] == 2 and resumed["epochs_run"] == 4 and resumed["steps"] == straight["steps"] == 8
    assert "resuming" in lines[0] and len(lines) == 3
    # Identical weights: the model written (best epoch) and the last state in the checkpoint, optimizer included.
    a, b = weights(tmp_path / "s.pt"), weights(tmp_path / "r.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(tmp_path / "s.ckpt", weights_only=True)
    cb = torch.load(tmp_path / "r.ckpt", weights_only=True)
    assert ca["epoch"] == cb["epoch"] == 4
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert ca["scheduler"] == cb["scheduler"]
    # The log of the resumed run holds every epoch once, with the same losses as the straight run.
    la = [json.loads(x) for x in (tmp_path / "s.log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "r.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lb] == [1, 2, 3, 4]
    assert [(r["loss"], r["lr"], r["val_mean_iou"]) for r in la] == [(r["loss"], r["lr"], r["val_mean_iou"]) for r in lb]
    # Resuming a finished run with no more epochs rewrites the same model.
    again = train(tilesets[2], tmp_path / "r.pt", config=TrainConfig(**{**RESUMABLE, "epochs": 4}), resume=True)
    assert again["epochs_run"] == 4 and again["steps"] == 8
    assert all(torch.equal(a[k], v) for k, v in weights(tmp_path / "r.pt").items())


def test_resume_needs_the_same_settings(tilesets, tmp_path):
    out = tmp_path / "m.pt"
    train(tilesets[2], out, config=TrainConfig(**RESUMABLE))
    ckpt = training.checkpoint_path_for(out)
    assert ckpt == tmp_path / "m.ckpt" and ckpt.exists()
    before = ckpt.read_bytes()
    for change, match in ((dict(lr=0.5), "--lr 0.001, not 0.5"), (dict(loss="ce"), "--loss 'focal\\+dice'"),
                          (dict(augment="basic"), "--augment")):
        with pytest.raises(InputError, match=match):
            train(tilesets[2], out, config=TrainConfig(**{**RESUMABLE, **change}), resume=True)
    with pytest.raises(InputError, match="tile set"):
        train(tilesets[3], out, config=TrainConfig(**RESUMABLE), resume=True)
    assert ckpt.read_bytes() == before
    # A checkpoint is never silently replaced by a new run.
    out.unlink()
    with pytest.raises(OutputExistsError, match="--resume.*--overwrite"):
        train(tilesets[2], out, config=TrainConfig(**RESUMABLE))
    train(tilesets[2], out, config=TrainConfig(**RESUMABLE), overwrite=True)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(InputError, match="does not load"):
        train(tilesets[2], out, config=TrainConfig(**RESUMABLE), resume=True)
    # --resume with no checkpoint yet starts a run.
    s = train(tilesets[2], tmp_path / "new.pt", config=TrainConfig(**RESUMABLE), resume=True)
    assert s["resumed_from"] is None and (tmp_path / "new.ckpt").exists()


def test_checkpoint_contents(tilesets, tmp_path):
    s = train(tilesets[3], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "epochs": 2, "schedule": "plateau"}))
    ckpt = torch.load(s["checkpoint"], weights_only=True)  # plain data only: loads without running code
    assert ckpt["format"] == "rockseg-checkpoint" and ckpt["epoch"] == 2 and ckpt["optimizer_steps"] == 4
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and ckpt["scheduler"]["mode"] == "max"
    assert ckpt["best"]["epoch"] == s["best_epoch"] and len(ckpt["history"]) == 2
    assert all(torch.equal(ckpt["best"]["state"][k], v) for k, v in weights(tmp_path / "m.pt").items())
    assert not list(tmp_path.glob(".*partial*"))


# ------------------------------------------------------------------------------------------------ settings
def test_more_checks_before_training(tilesets, tmp_path):
    out = tmp_path / "m.pt"
    cases = [
        (dict(loss="ce+dcie"), InputError, "did you mean 'dice'"),
        (dict(optimizer="adma"), InputError, "--optimizer 'adma' is unknown \\(did you mean 'adam'"),
        (dict(schedule="cos"), InputError, "--schedule"),
        (dict(augment="strnog"), InputError, "did you mean 'strong'"),
        (dict(precision="fp16"), InputError, "--precision"),
        (dict(norm="group"), InputError, "--norm"),
        (dict(act="gelu"), InputError, "--act"),
        (dict(fraction=0.0), InputError, "--fraction 0.0 must be above 0"),
        (dict(fraction=1.5), InputError, "--fraction"),
        (dict(fraction=0.5, steps_per_epoch=3), InputError, "give only one of them"),
        (dict(accumulate=0), InputError, "--accumulate"),
        (dict(weight_decay=-1.0), InputError, "--weight-decay"),
        (dict(schedule="exp", min_lr=0.0), InputError, "--min-lr"),
        (dict(schedule="exp", min_lr=1.0), InputError, "at most --lr"),
        (dict(iou_alpha=0.0), InputError, "--iou-alpha"),
        (dict(focal_gamma=-1.0), InputError, "--focal-gamma"),
        (dict(seed=-1), InputError, "--seed"),
        (dict(class_weights="1,2,3"), InputError, "gives 3 weights but tile set .* has 2 classes"),
        (dict(class_weights="heavy"), InputError, "--class-weights 'heavy'"),
        (dict(encoder="resnet1000"), InputError, "--encoder"),
        (dict(freeze_encoder=True), InputError, "--freeze-encoder needs a backbone encoder: add --encoder"),
        (dict(encoder_weights="w.pth"), InputError, "--encoder-weights needs a backbone encoder"),
        (dict(arch="resunet", encoder="resnet18"), InputError, "--arch resunet takes no --encoder"),
        (dict(encoder="resnet18", encoder_weights=str(tmp_path / "nope.pth")), MissingInputError,
         "nope.pth does not exist"),
        (dict(depth=5), InputError, "--arch unet with --depth 5 needs a multiple of 32"),
    ]
    for change, exc, match in cases:
        with pytest.raises(exc, match=match):
            train(tilesets[2], out, config=TrainConfig(**{**TINY, **change}))
    assert list(tmp_path.iterdir()) == []


def test_pretrained_frozen_encoder_stays_as_loaded(tilesets, tmp_path):
    # A "pretrained" backbone: the encoder of another seed's network, saved as a state-dict file.
    torch.manual_seed(123)
    donor = models.build_model("unet", spatial_dims=2, in_channels=1, classes=2, base_channels=4, depth=3,
                               encoder="resnet18")
    for m in donor.encoder.modules():  # make the normalisation statistics recognisable too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(0.25)
    torch.save({k: v for k, v in donor.state_dict().items() if k.startswith("encoder.")}, tmp_path / "w.pth")
    config = TrainConfig(**{**TINY, "encoder": "resnet18", "encoder_weights": str(tmp_path / "w.pth"),
                            "freeze_encoder": True, "epochs": 2})
    s = train(tilesets[2], tmp_path / "m.pt", config=config)
    payload = read_model_file(tmp_path / "m.pt")
    assert payload["arch_args"]["encoder"] == "resnet18" and s["frozen_parameters"] > 0
    assert s["encoder_weights"]["sha256"] == models.file_sha256(tmp_path / "w.pth")
    got, want = payload["state_dict"], donor.state_dict()
    enc = [k for k in want if k.startswith("encoder.") and not k.endswith("num_batches_tracked")]
    assert enc and all(torch.equal(got[k], want[k]) for k in enc)  # weights and BatchNorm statistics untouched
    assert load_model(tmp_path / "m.pt")(torch.zeros((1, 1, 32, 32))).shape == (1, 2, 32, 32)


def test_tile_for_rounds_up_to_the_divisor():
    assert training.tile_for(16, 3) == 64 and training.tile_for(16, 2) == 256
    assert training.tile_for(20, 3, multiple=16) == 64 and training.tile_for(300, 2, multiple=32) == 320
    assert training.tile_for(96, 3, multiple=32) == 96
    assert models.tile_multiple("unet", dict(spatial_dims=2, classes=2, base_channels=4, depth=4)) == 16


def test_model_file_records_the_run(tilesets, tmp_path):
    out = tmp_path / "m.pt"
    config = TrainConfig(**{**TINY, "loss": "ce+logiou", "class_weights": "balanced", "augment": "strong",
                            "optimizer": "sgd", "schedule": "cosine", "act": "elu", "norm": "instance"})
    s = train(tilesets[2], out, config=config)
    t = read_model_file(out)["training"]
    assert t["loss_terms"] == ["ce", "logiou"] and len(t["class_weights"]) == 2
    assert t["augment"]["rotate"] > 0 and t["world_size"] == 1 and t["resumed_from"] is None
    assert t["config"]["optimizer"] == "sgd" and t["config"]["schedule"] == "cosine" and t["divisor"] == 8
    assert read_model_file(out)["arch_args"]["act"] == "elu" and "encoder" not in read_model_file(out)["arch_args"]
    assert Path(s["curve"]) == tmp_path / "m.curve.png"
    assert Path(s["curve"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = [json.loads(line) for line in Path(s["log"]).read_text().splitlines()]
    assert {"lr", "train_seconds", "world_size"} <= log[0].keys()


# ------------------------------------------------------------------------------------------------ command line
def test_cli_train_with_the_new_options(tilesets, tmp_path):
    from typer.testing import CliRunner

    from rockseg.cli import app

    runner = CliRunner()
    args = ["train", str(tilesets[2]), "-o", str(tmp_path / "m.pt"), "--base-channels", "4", "--epochs", "2",
            "--steps-per-epoch", "1", "--batch-size", "2", "--threads", "1", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--loss", "focal+dice", "--focal-gamma", "1.5", "--class-weights", "1,3",
                                 "--optimizer", "adamw", "--weight-decay", "1e-4", "--schedule", "exp",
                                 "--min-lr", "1e-4", "--warmup-epochs", "1", "--augment", "strong", "--act", "elu",
                                 "--norm", "instance", "--accumulate", "2", "--precision", "float32"])
    assert result.exit_code == 0, result.output
    c = read_model_file(tmp_path / "m.pt")["training"]["config"]
    assert (c["loss"], c["focal_gamma"], c["class_weights"], c["optimizer"], c["schedule"], c["augment"],
            c["accumulate"]) == ("focal+dice", 1.5, "1,3", "adamw", "exp", "strong", 2)
    result = runner.invoke(app, [*args, "--epochs", "3", "--resume"])  # other settings: refused, one line
    assert result.exit_code == 2 and "resume with the same settings" in result.output
    result = runner.invoke(app, [*args, "--loss", "ce+dise", "--overwrite"])
    assert result.exit_code == 2 and "did you mean 'dice'" in result.output
    assert "Recipes" in runner.invoke(app, ["train", "--help"]).output


def test_cli_architectures_are_the_models():
    from rockseg.cli import Arch, Loss

    # cli.py lists them itself (importing torch there would slow every command): the lists must agree
    assert [a.value for a in Arch] == list(models.ARCHITECTURES)
    assert [t.value for t in Loss] == list(training.LOSS_TERMS)


@pytest.mark.slow
def test_torchrun_two_processes(tilesets, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rockseg",
           "train", str(tilesets[2]), "-o", str(out), "--device", "cpu", "--epochs", "2", "--base-channels", "4",
           "--batch-size", "2", "--steps-per-epoch", "2", "--threads", "1", "--loss", "ce"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote") == 1  # rank 0 reports, rank 1 does not
    log = [json.loads(line) for line in (tmp_path / "m.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["world_size"] == 2 for r in log)
    t = read_model_file(out)["training"]
    assert t["world_size"] == 2 and t["steps"] == 4 and t["effective_batch"] == 4
    assert load_model(out)(torch.zeros((1, 1, 16, 16))).shape == (1, 2, 16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.curve.png", "m.log.jsonl", "m.pt"]
