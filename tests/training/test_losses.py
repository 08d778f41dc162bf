"""Tests of rockseg.training.losses: every term by hand, sums of terms, class weights, and the --loss checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rockseg import models
from rockseg.errors import InputError
from rockseg.training import TrainConfig, iou_from_confusion, train
from rockseg.training import losses
from tests.training.helpers import TINY


def test_soft_dice_and_iou_by_hand():
    target = torch.tensor([[0, 1, 1, 0]])
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 50
    assert float(losses._soft_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros((1, 2, 4))
    # p = 0.5 everywhere: each class has intersection 1, sums 2 + 2 -> dice (2*1 + 1) / (4 + 1) = 0.6
    assert float(losses._soft_dice_loss(uniform, target)) == pytest.approx(0.4)
    conf = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(3 / 6) and iou[1] == pytest.approx(4 / 7) and np.isnan(iou[2])


def test_loss_terms_by_hand():
    target = torch.tensor([[0, 1, 1, 0]])
    uniform = torch.zeros((1, 2, 4))
    # p = 0.5 everywhere. Soft IoU per class: intersection 2 * 0.5 = 1, union 2 + 2 - 1 = 3 -> (1 + 1) / (3 + 1).
    assert float(losses.soft_iou(uniform, target)) == pytest.approx(0.5)
    assert float(losses.loss_function("logiou")(uniform, target)) == pytest.approx(np.log(2))
    assert float(losses.loss_function("logiou", iou_alpha=0.5)(uniform, target)) == pytest.approx(0.5 * np.log(2))
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 50
    assert float(losses.loss_function("logiou")(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    # Focal loss with p_t = 0.5 everywhere: (1 - 0.5)**2 * log 2 = log(2) / 4; gamma 0 is cross-entropy, log 2.
    assert float(losses.loss_function("focal")(uniform, target)) == pytest.approx(np.log(2) / 4)
    assert float(losses.loss_function("focal", focal_gamma=0)(uniform, target)) == pytest.approx(np.log(2))
    # One voxel with logits (ln 3, 0): p = (0.75, 0.25). Target 1: focal = -(0.75**2) log 0.25.
    logits = torch.tensor([[[np.log(3.0)], [0.0]]], dtype=torch.float32)
    t1 = torch.tensor([[1]])
    assert float(losses.focal_loss(logits, t1, gamma=2)) == pytest.approx(-(0.75**2) * np.log(0.25), rel=1e-6)
    assert float(losses.focal_loss(logits, t1, gamma=1)) == pytest.approx(-0.75 * np.log(0.25), rel=1e-6)
    # Sums are sums of their terms, in any order; ce+logiou = CE - alpha log(soft IoU).
    rng = torch.Generator().manual_seed(0)
    x, y = torch.randn((2, 3, 5, 5), generator=rng), torch.randint(0, 3, (2, 5, 5), generator=rng)
    ce, dice = F.cross_entropy(x, y), losses.soft_dice_loss(x, y)
    focal, iou = losses.focal_loss(x, y, gamma=2.0), losses.soft_iou(x, y)
    torch.testing.assert_close(losses.loss_function("ce+logiou", iou_alpha=0.3)(x, y), ce - 0.3 * torch.log(iou))
    torch.testing.assert_close(losses.loss_function("dice+focal")(x, y), focal + dice)
    torch.testing.assert_close(losses.loss_function("focal+dice")(x, y), focal + dice)
    torch.testing.assert_close(losses.loss_function(" CE + Dice ")(x, y), ce + dice)
    torch.testing.assert_close(losses.loss_function("ce+dice+focal+logiou")(x, y), ce + dice + focal - torch.log(iou))


def test_weighted_focal_with_gamma_0_is_weighted_cross_entropy():
    rng = torch.Generator().manual_seed(1)
    x, y = torch.randn((3, 4, 6, 6), generator=rng), torch.randint(0, 4, (3, 6, 6), generator=rng)
    w = [1.0, 2.0, 5.0, 5.0]
    torch.testing.assert_close(losses.loss_function("focal", focal_gamma=0, class_weights=w)(x, y),
                               F.cross_entropy(x, y, weight=torch.tensor(w)))
    torch.testing.assert_close(losses.loss_function("ce", class_weights=w)(x, y),
                               F.cross_entropy(x, y, weight=torch.tensor(w)))


@pytest.mark.parametrize("kind", ["ce", "focal"])
def test_class_weights_move_the_gradient_toward_the_weighted_class(kind):
    target = torch.tensor([[0, 0, 1, 1]])
    logits = torch.tensor([[[0.3, -0.2, 0.1, 0.4], [0.0, 0.5, -0.3, 0.2]]])

    def grads(weights):
        x = logits.clone().requires_grad_(True)
        losses.loss_function(kind, class_weights=weights)(x, target).backward()
        return x.grad[0].abs().sum(0)  # gradient size per voxel

    plain, weighted = grads(None), grads([1.0, 5.0])
    # Up-weighting class 1 multiplies the pull of its voxels by 5 relative to the class-0 voxels.
    ratio_plain = plain[2:].sum() / plain[:2].sum()
    ratio_weighted = weighted[2:].sum() / weighted[:2].sum()
    assert float(ratio_weighted / ratio_plain) == pytest.approx(5.0, rel=1e-5)


def test_parse_loss_and_class_weights():
    assert losses.parse_loss("ce+dice") == ("ce", "dice") and losses.parse_loss("Focal") == ("focal",)
    for bad, match in (("cee", "did you mean 'ce'"), ("ce+ce", "twice"), ("ce+", "is not a loss"),
                       ("logio", "did you mean 'logiou'")):
        with pytest.raises(InputError, match=match):
            losses.parse_loss(bad)
    # Inverse frequency normalised to mean 1: counts 30, 10 -> 40/30, 40/10 -> 0.5, 1.5.
    assert losses.parse_class_weights("balanced", counts=[30, 10]) == pytest.approx([0.5, 1.5])
    assert losses.parse_class_weights("balanced", counts=[30, 0, 10]) == pytest.approx([0.5, 1.0, 1.5])
    assert losses.parse_class_weights("1,2,5,5", classes=4) == [1.0, 2.0, 5.0, 5.0]
    assert losses.parse_class_weights(None) is None
    with pytest.raises(InputError, match="gives 3 weights but tile set t.zarr has 4 classes"):
        losses.parse_class_weights("1,2,5", classes=4, tiles="t.zarr")
    for bad in ("1,x", "-1,2", "0,0"):
        with pytest.raises(InputError, match="--class-weights"):
            losses.parse_class_weights(bad)


@pytest.mark.parametrize("loss", ["dice", "ce+dice"])
def test_other_losses_train(tilesets, tmp_path, loss):
    s = train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "loss": loss, "steps_per_epoch": 1}),
              progress=True)
    assert s["config"]["loss"] == loss and (tmp_path / "m.pt").exists()


def test_cli_architectures_are_the_models():
    from rockseg.cli import Arch, Loss

    # cli.py lists them itself (importing torch there would slow every command): the lists must agree
    assert [a.value for a in Arch] == list(models.ARCHITECTURES)
    assert [t.value for t in Loss] == list(losses.LOSS_TERMS)


def _logits_of(labels: np.ndarray, classes: int = 2, sharp: float = 20.0) -> torch.Tensor:
    onehot = np.eye(classes, dtype=np.float32)[labels]  # (N, *S, C)
    return torch.from_numpy(np.moveaxis(onehot, -1, 1) * sharp)


def test_soft_skeleton_of_a_bar_is_its_centreline():
    from rockseg.training.losses import soft_skeleton

    bar = torch.zeros(1, 1, 9, 9, 20)
    bar[..., 3:6, 3:6, 2:18] = 1.0  # a 3x3 bar along x
    skel = soft_skeleton(bar, iterations=3)
    assert skel[0, 0, 4, 4, 4:16].min() > 0.99  # the centre line is kept
    assert skel[0, 0, 3, 3, 4:16].max() < 0.01 and skel[..., :3, :, :].abs().max() < 1e-6  # edges and outside not


def test_cldice_penalises_a_broken_throat_more_than_a_thicker_one():
    from rockseg.training.losses import soft_cldice_loss

    truth = np.zeros((1, 11, 11, 24), np.int64)
    truth[0, 4:7, 4:7, 2:22] = 1  # a throat of 3x3 voxels
    broken, thick = truth.copy(), truth.copy()
    broken[0, :, :, 11:13] = 0  # cut: 18 of 180 voxels lost
    thick[0, 3:8, 4:7, 2:22] = 1  # widened by 120 voxels
    target = torch.from_numpy(truth)
    perfect = soft_cldice_loss(_logits_of(truth), target).item()
    cut = soft_cldice_loss(_logits_of(broken), target).item()
    wide = soft_cldice_loss(_logits_of(thick), target).item()
    assert perfect < 1e-3 and cut > wide
    # Dice sees it the other way round: the cut loses fewer voxels than the widening adds
    dice = losses.soft_dice_loss
    assert dice(_logits_of(broken), target).item() < dice(_logits_of(thick), target).item()


def test_cldice_is_a_loss_term_that_trains():
    loss = losses.loss_function("ce+cldice")
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    value = loss(logits, torch.randint(0, 3, (2, 8, 8, 8)))
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None and torch.isfinite(logits.grad).all()
    assert losses.loss_function("cldice")(torch.randn(2, 2, 16, 16), torch.randint(0, 2, (2, 16, 16))).ndim == 0  # 2D
