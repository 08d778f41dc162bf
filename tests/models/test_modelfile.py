"""Every network trains and round-trips through a model file, and through rockseg's train and predict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rockseg.models import (
    ARCHITECTURES,
    build_model,
    load_model,
    model_from_payload,
    read_model_file,
    save_model_file,
    tile_multiple,
)
from tests.helpers import CASES, HEAVY, model_args, model_input


def _case_params():
    for arch, encoder in CASES:
        for dims in (2, 3):
            slow = dims == 3 and (arch, encoder) in HEAVY
            yield pytest.param(arch, encoder, dims, id=f"{arch}-{encoder}-{dims}d",
                               marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("arch,encoder,dims", list(_case_params()))
def test_forward_train_and_model_file(arch, encoder, dims, tmp_path):
    torch.manual_seed(0)
    args = model_args(encoder, dims)
    model = build_model(arch, **args)
    assert isinstance(model.divisor, int) and model.divisor == 8
    assert tile_multiple(arch, args) == model.divisor
    x = model_input(model, dims)

    # forward: logits of the input's spatial shape
    out = model(x)
    assert out.shape == (2, 3, *x.shape[2:])
    assert torch.isfinite(out).all()

    # training: gradients reach every parameter, including the first convolution, and the loss falls
    target = (x[:, 0] > 0).long() + (x[:, 0] > 1).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        losses.append(loss.item())
        if len(losses) == 1:
            for name, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
            first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
            assert first.in_channels == 1 and first.weight.grad.abs().sum() > 0
        optimizer.step()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]

    # the model file round trip: same arguments, same weights, identical outputs in eval mode
    path = tmp_path / "m.pt"
    save_model_file(path, model, arch=arch, arch_args=args, spatial_dims=dims, in_channels=1,
                    phases={0: "a", 1: "b", 2: "c"}, normalization={"p_low": 0.0, "p_high": 1.0}, tile=16, halo=4)
    assert read_model_file(path)["arch_args"] == args
    loaded = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


@pytest.fixture(scope="module")
def tiny_tile_sets(tmp_path_factory):
    """A 2D and a 3D tile set of edge 16 from a small two-phase volume whose grey values follow the labels."""
    import numpy as np
    import zarr

    from rockseg.training import make_tiles

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(3)
    labels = (rng.random((40, 40, 40)) < 0.4).astype(np.uint8)
    image = (labels * 120 + 60 + rng.integers(0, 20, labels.shape)).astype(np.uint8)
    for name, data in (("image", image), ("labels", labels)):
        zarr.create_array(store=str(root / f"{name}.zarr"), shape=data.shape, chunks=(20, 20, 20),
                          dtype="uint8")[...] = data
    sets = {}
    for dims in (2, 3):
        sets[dims] = root / f"tiles{dims}.zarr"
        make_tiles(root / "image.zarr", root / "labels.zarr", sets[dims], dims=dims, size=16, count=8)
    return root, sets


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_network_trains_and_predicts_through_rockseg(arch, dims, tiny_tile_sets, tmp_path, one_thread):
    """rockseg.training.train writes a model file for every network, and the block engine predicts with it the
    labels the network gives on the whole volume in memory (one tile covers it: no halo, no seams)."""
    import numpy as np
    import zarr

    from rockseg.inference import PredictConfig, predict
    from rockseg.io.intensity import normalize
    from rockseg.training import TrainConfig, train

    root, sets = tiny_tile_sets
    depth = 2  # deeplabv3plus and pspnet need at least 2; 16-voxel tiles allow at most 4
    config = TrainConfig(arch=arch, base_channels=4, depth=depth, epochs=1, steps_per_epoch=2, batch_size=2,
                         device="cpu", num_threads=1)
    summary = train(sets[dims], tmp_path / "m.pt", config=config)
    assert summary["epochs_run"] == 1
    out = tmp_path / "pred.zarr"
    predict(root / "image.zarr", out, model=tmp_path / "m.pt",
            config=PredictConfig(tile=40, halo=0, block=40, device="cpu", specks=0))  # the network's labels alone
    got = zarr.open_array(str(out))[...]
    payload = read_model_file(tmp_path / "m.pt")
    model = model_from_payload(payload)
    image = zarr.open_array(str(root / "image.zarr"))[...]
    x = torch.from_numpy(normalize(image, payload["normalization"]))
    # one 40^3 tile in 3D; in 2D each z slice is one 40x40 tile, so the slices form the batch
    x = x[None, None] if dims == 3 else x[:, None]
    with torch.no_grad():
        want = model(x).argmax(1).numpy().reshape(image.shape)
    assert got.shape == image.shape and got.dtype == np.uint8
    # float32 channels-last in the engine against contiguous here: a near-tie may flip, nothing more
    assert (got == want).mean() >= 0.999
