"""The training loss: a "+"-sum of cross-entropy, soft Dice, focal and log soft IoU terms, with class weights.

:func:`parse_loss` and :func:`parse_class_weights` check the ``--loss`` and ``--class-weights`` options;
:func:`loss_function` builds ``f(logits, target) -> scalar`` from them. The terms are :data:`LOSS_TERMS` (defined
in :mod:`rockseg.vocabulary`): ``ce`` (:func:`torch.nn.functional.cross_entropy`), ``dice``
(:func:`soft_dice_loss`), ``focal`` (:func:`focal_loss`), ``logiou`` (``-iou_alpha * log`` of
:func:`soft_iou`) and ``cldice`` (:func:`soft_cldice_loss`, the topology-aware centreline Dice).

Sparse labels: with ``ignore`` (the tile set's unlabelled value) every term leaves the voxels of that label out:
cross-entropy and focal average over the labelled voxels only, and the overlap terms (Dice, IoU, clDice) see the
probabilities and the one-hot target zeroed there (``valid`` masks), so an unlabelled voxel pulls nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rockseg.errors import InputError, did_you_mean
from rockseg.vocabulary import LOSS_TERMS

#: Laplace smoothing of the soft Dice and soft IoU: keeps a phase absent from a batch from dominating the loss.
SMOOTH = 1.0


def parse_loss(text: str) -> tuple[str, ...]:
    """The terms of a ``--loss`` value: ``"ce+dice"`` -> ``("ce", "dice")``; each of :data:`LOSS_TERMS`, once."""
    terms = tuple(t.strip().lower() for t in str(text).split("+"))
    for t in terms:
        if t not in LOSS_TERMS:
            raise InputError(
                f"--loss {text!r}: {t!r} is not a loss{did_you_mean(t, LOSS_TERMS)}: use one of "
                f"{', '.join(LOSS_TERMS)} or a sum of them such as ce+dice"
            )
    if len(set(terms)) < len(terms):
        raise InputError(f"--loss {text!r} names a term twice: give each of {', '.join(LOSS_TERMS)} at most once")
    return terms


def parse_class_weights(
    value: str | None, *, classes: int | None = None, counts: Sequence[int] | None = None, tiles: Any = "",
) -> list[float] | None:
    """Class weights from ``--class-weights``: None, ``"balanced"`` or ``"w0,w1,..."``.

    Parameters
    ----------
    value : the option's text.
    classes : number of classes; when given, a list must have one weight per class.
    counts : (classes,) voxel counts of each class in the training tiles, for ``"balanced"``: weights are the
        inverse frequencies normalised to mean 1 over the classes present (an absent class gets weight 1, it is
        never a target).
    tiles : the tile set, for messages.

    Returns
    -------
    list of floats (or None for no weighting, and for ``"balanced"`` when ``counts`` is not given).
    """
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    if text.lower() == "balanced":
        if counts is None:
            return None
        c = np.asarray(counts, np.float64)
        present = c > 0
        w = np.ones(len(c))
        w[present] = c[present].sum() / c[present]
        w[present] /= w[present].mean()
        return [float(x) for x in w]
    try:
        weights = [float(t) for t in text.split(",")]
    except ValueError:
        raise InputError(
            f"--class-weights {text!r} is neither 'balanced' nor a comma-separated list of numbers: "
            f"use e.g. balanced or 1,2,5,5"
        ) from None
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise InputError(f"--class-weights {text!r} must be numbers >= 0, not all 0: use e.g. 1,2,5,5")
    if classes is not None and len(weights) != classes:
        raise InputError(
            f"--class-weights {text!r} gives {len(weights)} weights but tile set {tiles} has {classes} classes: "
            f"give one weight per class, or --class-weights balanced"
        )
    return weights


def _prob_onehot(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and one-hot target (N, C, *S), both zero where ``valid`` (N, *S) is False."""
    prob = logits.softmax(1)
    onehot = F.one_hot(target, prob.shape[1]).movedim(-1, 1).to(prob.dtype)
    if valid is not None:
        keep = valid.unsqueeze(1).to(prob.dtype)
        prob, onehot = prob * keep, onehot * keep
    return prob, onehot


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient, summed over the batch and space (smoothing 1).

    ``dice_c = (2 sum(p_c y_c) + 1) / (sum p_c + sum y_c + 1)`` with ``p`` the softmax of the logits
    (N, C, *S) and ``y`` the one-hot target (N, *S); voxels where ``valid`` is False count nowhere.
    """
    prob, onehot = _prob_onehot(logits, target, valid)
    axes = (0, *range(2, prob.ndim))
    inter = (prob * onehot).sum(axes)
    denom = prob.sum(axes) + onehot.sum(axes)
    return 1.0 - ((2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()


_soft_dice_loss = soft_dice_loss


def soft_iou(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Smoothed soft IoU (Jaccard) averaged over classes, summed over the batch and space.

    ``iou_c = (sum(p_c y_c) + 1) / (sum(p_c + y_c - p_c y_c) + 1)``; returns the mean over classes. Voxels where
    ``valid`` is False count nowhere.
    """
    prob, onehot = _prob_onehot(logits, target, valid)
    axes = (0, *range(2, prob.ndim))
    inter = (prob * onehot).sum(axes)
    union = prob.sum(axes) + onehot.sum(axes) - inter
    return ((inter + SMOOTH) / (union + SMOOTH)).mean()


def _soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Grey-level erosion by a cross (min over the 6- or 4-neighbourhood and the voxel), as a min of 1D pools."""
    pool = F.max_pool3d if x.ndim == 5 else F.max_pool2d
    dims = x.ndim - 2
    out = None
    for axis in range(dims):
        kernel = tuple(3 if a == axis else 1 for a in range(dims))
        pad = tuple(1 if a == axis else 0 for a in range(dims))
        eroded = -pool(-x, kernel, 1, pad)
        out = eroded if out is None else torch.minimum(out, eroded)
    assert out is not None
    return out


def _soft_dilate(x: torch.Tensor) -> torch.Tensor:
    pool = F.max_pool3d if x.ndim == 5 else F.max_pool2d
    return pool(x, 3, 1, 1)


def soft_skeleton(x: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Soft morphological skeleton of probabilities (N, C, *S) in [0, 1] (Shit et al., clDice, CVPR 2021).

    The skeleton is what each erosion takes away that an opening of it would not restore, summed over
    ``iterations`` erosions: for a binary input, the centrelines of structures up to about ``2 * iterations + 1``
    voxels thick. Differentiable: erosion and dilation are min- and max-pooling.
    """
    skeleton = F.relu(x - _soft_dilate(_soft_erode(x)))
    for _ in range(iterations):
        x = _soft_erode(x)
        delta = F.relu(x - _soft_dilate(_soft_erode(x)))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton


def soft_cldice_loss(
    logits: torch.Tensor, target: torch.Tensor, iterations: int = 3, valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """1 - mean over classes of the soft centreline Dice (clDice, Shit et al. 2021).

    For each class, topology precision is the share of the predicted skeleton inside the true phase and
    topology sensitivity the share of the true skeleton inside the predicted phase; clDice is their harmonic
    mean. A throat broken by the prediction cuts the true skeleton outside the predicted phase, so clDice drops
    although the overlap (Dice, IoU) barely changes: the term that makes a network keep thin connections.
    With ``valid`` the skeletons are those of the labelled voxels only (both zeroed elsewhere).
    """
    prob, onehot = _prob_onehot(logits, target, valid)
    axes = (0, *range(2, prob.ndim))
    skel_pred, skel_true = soft_skeleton(prob, iterations), soft_skeleton(onehot, iterations)
    precision = ((skel_pred * onehot).sum(axes) + SMOOTH) / (skel_pred.sum(axes) + SMOOTH)
    sensitivity = ((skel_true * prob).sum(axes) + SMOOTH) / (skel_true.sum(axes) + SMOOTH)
    return 1.0 - (2.0 * precision * sensitivity / (precision + sensitivity)).mean()


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0, weight: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss of Lin et al. (2017): the mean of ``-w_y (1 - p_y)**gamma log p_y`` over voxels.

    With class weights ``w`` the mean is weighted like :func:`torch.nn.functional.cross_entropy`'s
    (divided by the sum of the weights of the targets), so ``gamma = 0`` gives exactly the weighted cross-entropy.
    With ``valid`` the mean is over the voxels where it is True (0 when there are none).
    """
    logp = F.log_softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1.0 - logp.exp()) ** gamma) * logp if gamma else -logp
    if weight is None and valid is None:
        return loss.mean()
    w = torch.ones_like(loss) if weight is None else weight.to(loss.dtype)[target]
    if valid is not None:
        w = w * valid.to(loss.dtype)
        return (w * loss).sum() / w.sum().clamp_min(torch.finfo(loss.dtype).tiny)
    return (w * loss).sum() / w.sum()


def loss_function(
    kind: str, *, class_weights: Sequence[float] | None = None, focal_gamma: float = 2.0, iou_alpha: float = 1.0,
    device: torch.device | str = "cpu", ignore: int | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss ``f(logits (N, C, *S) float, target (N, *S) int64) -> scalar`` for ``kind``.

    ``kind`` is a "+"-sum of :data:`LOSS_TERMS`; ``logiou`` contributes ``-iou_alpha * log(soft_iou)``, so
    ``"ce+logiou"`` is the cross-entropy + α·log smoothed IoU loss. Class weights apply to ``ce`` and ``focal``.
    Target voxels equal to ``ignore`` (unlabelled) count in no term.
    """
    terms = parse_loss(kind)
    weight = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights is not None else None

    def one(term: str, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if term == "ce":
            if valid is None:
                return F.cross_entropy(logits, target, weight=weight)
            return focal_loss(logits, target, gamma=0.0, weight=weight, valid=valid)
        if term == "dice":
            return soft_dice_loss(logits, target, valid)
        if term == "focal":
            return focal_loss(logits, target, gamma=focal_gamma, weight=weight, valid=valid)
        if term == "cldice":
            return soft_cldice_loss(logits, target, valid=valid)
        return -iou_alpha * torch.log(soft_iou(logits, target, valid))

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = None
        if ignore is not None:
            valid = target != ignore
            target = torch.where(valid, target, 0)
        total = one(terms[0], logits, target, valid)
        for term in terms[1:]:
            total = total + one(term, logits, target, valid)
        return total

    return loss
