"""The block-wise engine against predictors whose output is known exactly.

``BoxSum`` is a real ``nn.Module`` whose argmax is the 3x3(x3) box sum of its (binary) input, computed with
zero padding inside each tile. The kept centre of a tile equals the box sum over the whole volume mirrored at its
faces only if tiles, halos and blocks are placed exactly right, so any seam or off-by-one shows as a wrong label.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage

from rockseg.errors import InputError, OutputExistsError
from rockseg.inference import PredictConfig, predict
from rockseg.models import UNet, save_model_file
from rockseg.vocabulary import OUTSIDE
from tests.helpers import binary_volume, expected_boxsum, grey_volume


@pytest.mark.parametrize("block", [12, 20, 24, 64])
def test_boxsum_exact_for_any_block(tmp_path, boxsum, block):
    data = binary_volume(tmp_path / "v.zarr", (23, 30, 17), chunks=(8, 8, 8))
    model = boxsum(tmp_path / "m.pt")
    summary = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                      config=PredictConfig(block=block, batch_size=3, device="cpu"))
    assert summary["complete"] and summary["blocks_missing"] == 0
    out = zarr.open_array(str(tmp_path / "p.zarr"))[...]
    np.testing.assert_array_equal(out, expected_boxsum(data))


def test_2d_model_on_3d_volume_slice_by_slice(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (5, 29, 21))
    model = boxsum(tmp_path / "m.pt", spatial_dims=2)
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=10, device="cpu"))
    out = zarr.open_array(str(tmp_path / "p.zarr"))[...]
    np.testing.assert_array_equal(out, expected_boxsum(data, axes=2))


def test_2d_model_on_2d_image(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (29, 21))
    model = boxsum(tmp_path / "m.pt", spatial_dims=2)
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=16, device="cpu"))
    out = zarr.open_array(str(tmp_path / "p.zarr"))
    assert out.shape == (29, 21) and out.chunks == (16, 16)
    np.testing.assert_array_equal(out[...], expected_boxsum(data))


def test_unet_labels_independent_of_block(tmp_path):
    grey_volume(tmp_path / "v.zarr", (40, 36, 44), seed=1, chunks=(16, 16, 16))
    torch.manual_seed(0)
    # instance norm makes a random network's output vary across the volume (batch norm at init does not)
    args = {"spatial_dims": 3, "classes": 3, "base_channels": 4, "depth": 2, "norm": "instance"}
    net = UNet(**args).eval()
    save_model_file(
        tmp_path / "m.pt", net, arch="unet", arch_args=args,
        spatial_dims=3, in_channels=1, phases={0: "a", 1: "b", 2: "c"},
        normalization={"p_low": 0.0, "p_high": 255.0}, tile=16, halo=4,
    )
    outs = []
    # step 8: tiles 0 and 4 of each axis are clamped at the faces (tile 4 reads [24, 40) of z, not [28, 44)); blocks
    # of 12 cut them and tile 1 between two blocks, with three blocks in flight and batches mixing face tiles (run
    # whole) and inner ones (centre only)
    for block, workers in ((8, 2), (16, 2), (40, 2), (12, 3)):
        predict(tmp_path / "v.zarr", tmp_path / f"p{block}.zarr", model=tmp_path / "m.pt",
                config=PredictConfig(block=block, device="cpu", batch_size=5, workers=workers))
        outs.append(zarr.open_array(str(tmp_path / f"p{block}.zarr"))[...])
    assert len(np.unique(outs[0])) > 1
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


def test_tta_crop_and_workers_keep_exact_labels(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (22, 26, 19), chunks=(8, 8, 8))
    model = boxsum(tmp_path / "m.pt")
    expected = expected_boxsum(data)
    # flips of a box sum are the same box sum: test-time augmentation must not move anything
    predict(tmp_path / "v.zarr", tmp_path / "tta.zarr", model=model,
            config=PredictConfig(block=12, device="cpu", tta=True, workers=3))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "tta.zarr"))[...], expected)
    # a crop reads its context from the volume around it: equal to the crop of the whole prediction
    predict(tmp_path / "v.zarr", tmp_path / "crop.zarr", model=model,
            config=PredictConfig(block=8, device="cpu", crop="3:17,5:,:-2", workers=1))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "crop.zarr"))[...], expected[3:17, 5:, :-2])


def test_mask_leaves_outside_untouched(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (20, 24, 24))
    model = boxsum(tmp_path / "m.pt")
    zz, yy, xx = np.mgrid[:20, :24, :24]
    cylinder = ((yy - 11.5) ** 2 + (xx - 11.5) ** 2 < 10**2).astype(np.uint8)
    cylinder[:, :, 20:] = 0  # a whole block outside the field of view
    m = zarr.create_array(store=str(tmp_path / "mask.zarr"), shape=data.shape, chunks=data.shape, dtype="uint8")
    m[...] = cylinder
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
            config=PredictConfig(block=12, device="cpu", mask=str(tmp_path / "mask.zarr")))
    out = zarr.open_array(str(tmp_path / "p.zarr"))[...]
    expected = np.where(cylinder > 0, expected_boxsum(data), OUTSIDE)
    np.testing.assert_array_equal(out, expected)
    m2 = zarr.create_array(store=str(tmp_path / "bad.zarr"), shape=(20, 24, 23), chunks=(20, 24, 23), dtype="uint8")
    with pytest.raises(InputError, match=r"mask .* has shape \(20, 24, 23\)"):
        predict(tmp_path / "v.zarr", tmp_path / "q.zarr", model=model, config=PredictConfig(mask=str(tmp_path / "bad.zarr")))
    assert m2.shape == (20, 24, 23)


@pytest.mark.parametrize("axis", ["y", "x"])
def test_2d_model_along_other_axes(tmp_path, boxsum, axis):
    data = binary_volume(tmp_path / "v.zarr", (21, 17, 19))
    model = boxsum(tmp_path / "m.pt", spatial_dims=2)
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
            config=PredictConfig(block=10, device="cpu", axis=axis))
    kernel = np.ones((3, 1, 3) if axis == "y" else (3, 3, 1), np.int64)
    expected = ndimage.correlate(data.astype(np.int64), kernel, mode="constant")  # clamped at the faces
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...], expected)


def test_nan_in_float_volume_is_refused(tmp_path, boxsum):
    model = boxsum(tmp_path / "m.pt")
    data = np.ones((20, 20, 20), np.float32)
    data[15, 3, 4] = np.nan
    arr = zarr.create_array(store=str(tmp_path / "v.zarr"), shape=data.shape, chunks=(10, 10, 10), dtype="float32")
    arr[...] = data
    arr.attrs["intensity"] = {"p_low": 0.0, "p_high": 1.0}
    with pytest.raises(InputError, match="NaN or Inf"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=10, device="cpu"))


def _threshold_model(path, **meta):
    """A two-phase linear model that labels each voxel by its own grey value (1 above 0.5): predictions are the
    input, specks included."""
    from rockseg.models.linear import LinearClassifier

    model = LinearClassifier(3, 1, 2)
    with torch.no_grad():
        model.logits.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1))
        model.logits.bias.copy_(torch.tensor([0.5, -0.5]))
    save_model_file(path, model, arch="linear", arch_args={"spatial_dims": 3, "in_channels": 1, "classes": 2},
                    spatial_dims=3, in_channels=1, phases={0: "pore", 1: "solid"},
                    normalization={"p_low": 0.0, "p_high": 1.0}, tile=16, halo=0, **meta)
    return path


def test_the_models_speck_size_is_applied_block_by_block(tmp_path):
    from rockseg.specks import remove_specks

    data = binary_volume(tmp_path / "v.zarr", (24, 32, 40), seed=3, chunks=(8, 8, 8))
    plain = _threshold_model(tmp_path / "plain.pt")
    chosen = _threshold_model(tmp_path / "chosen.pt", postprocess={"specks": 3, "tried": []})
    predict(tmp_path / "v.zarr", tmp_path / "raw.zarr", model=plain, config=PredictConfig(block=16, device="cpu"))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "raw.zarr"))[...], data)  # a model without a choice

    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=chosen, config=PredictConfig(block=16, device="cpu"))
    expected = data.copy()
    for index in np.ndindex(2, 2, 3):
        box = tuple(slice(i * 16, min((i + 1) * 16, n)) for i, n in zip(index, data.shape))
        block = expected[box].copy()
        remove_specks(block, 3, classes=2, open_faces=[(s.start > 0, s.stop < n) for s, n in zip(box, data.shape)])
        expected[box] = block
    out = zarr.open_array(str(tmp_path / "p.zarr"))
    np.testing.assert_array_equal(out[...], expected)
    assert (expected != data).sum() > 100
    assert out.attrs["rockseg"]["settings"]["specks"] == 3

    # --specks overrides the model's choice; 0 keeps every speck
    predict(tmp_path / "v.zarr", tmp_path / "k0.zarr", model=chosen,
            config=PredictConfig(block=16, device="cpu", specks=0))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "k0.zarr"))[...], data)
    # a store made with another speck size is another prediction: resuming it is refused
    with pytest.raises(OutputExistsError, match=r"specks \(was 0, now 3\)"):
        predict(tmp_path / "v.zarr", tmp_path / "k0.zarr", model=chosen, config=PredictConfig(block=16, device="cpu"))
    with pytest.raises(InputError, match="--specks -1"):
        predict(tmp_path / "v.zarr", tmp_path / "bad.zarr", model=chosen, config=PredictConfig(specks=-1))
