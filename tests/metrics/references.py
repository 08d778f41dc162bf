"""What the metrics tests check scores against: NumPy and scikit-image references, and the volumes they score.

Shared by the test modules of ``tests/metrics``; not a test module itself.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import skimage.measure
import zarr


def skimage_euler(mask: np.ndarray, connectivity: int) -> int:
    """scikit-image's Euler number for rockseg's connectivity (1 or 3; 2D full connectivity is skimage's 2)."""
    if mask.ndim == 2 and connectivity == 3:
        connectivity = 2
    return int(skimage.measure.euler_number(mask, connectivity=connectivity))


def numpy_confusion(truth: np.ndarray, pred: np.ndarray, labels: list[int]) -> list[list[int]]:
    return [[int(np.count_nonzero((truth == t) & (pred == p))) for p in labels] for t in labels]


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], weights: list[float]) -> np.ndarray:
    p = np.asarray(weights, float) / sum(weights)
    return rng.choice(len(p), size=shape, p=p).astype(np.uint8)


def check_against_references(doc: dict, pred: np.ndarray, truth: np.ndarray | None, connectivity: int) -> None:
    """Every number of a score document against NumPy and scikit-image on the in-memory volumes."""
    labels = [p["label"] for p in doc["phases"]]
    present = set(np.unique(pred).tolist()) | (set() if truth is None else set(np.unique(truth).tolist()))
    assert present <= set(labels)
    assert doc["voxels"] == pred.size
    assert doc["connectivity"] == connectivity
    for phase in doc["phases"]:
        label = phase["label"]
        assert phase["euler_pred"] == skimage_euler(pred == label, connectivity), label
        assert phase["fraction_pred"] == np.count_nonzero(pred == label) / pred.size
        if truth is not None:
            assert phase["euler_true"] == skimage_euler(truth == label, connectivity), label
            assert phase["fraction_true"] == np.count_nonzero(truth == label) / truth.size
    if truth is not None:
        assert doc["confusion"] == numpy_confusion(truth, pred, labels)
        assert doc["accuracy"] == np.count_nonzero(truth == pred) / pred.size


def write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...], zarr_format: int = 3, **kwargs) -> zarr.Array:
    array = zarr.create_array(
        store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format, **kwargs
    )
    array[...] = data
    return zarr.open_array(str(path), mode="r")


class RecordingVolume:
    """A read-only label volume that records every region read from it (and has a chunk grid)."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...]) -> None:
        self.data, self.chunks = data, chunks
        self.shape, self.dtype = data.shape, data.dtype
        self.reads: list[tuple[slice, ...]] = []

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        self.reads.append(region)
        return self.data[region]


def planes(volume: np.ndarray, axis: int) -> list[np.ndarray]:
    return [np.take(volume, s, axis=axis) for s in range(volume.shape[axis])]


def check_per_slice(doc: dict, pred: np.ndarray, truth: np.ndarray | None, inside: np.ndarray, axis: int) -> None:
    """Every per-slice list against scikit-image and NumPy, slice by slice, with the mask ``inside`` applied."""
    per = doc["per_slice"]
    connectivity = doc["connectivity"]
    assert per["axis"] == "zyx"[axis]
    assert per["neighbourhood"] == (8 if connectivity == 3 else 4)
    assert per["voxels"] == [int(np.count_nonzero(m)) for m in planes(inside, axis)]
    assert [p["label"] for p in per["phases"]] == [p["label"] for p in doc["phases"]]
    for phase in per["phases"]:
        label = phase["label"]
        p_planes = planes((pred == label) & inside, axis)
        assert phase["euler_pred"] == [skimage_euler(p, connectivity) for p in p_planes], label
        assert phase["fraction_pred"] == [
            np.count_nonzero(p) / n if n else None for p, n in zip(p_planes, per["voxels"])
        ]
        scored = [e for e, n in zip(phase["euler_pred"], per["voxels"]) if n]
        assert (phase["euler_pred_min"], phase["euler_pred_max"]) == (min(scored), max(scored))
        assert phase["euler_pred_mean"] == pytest.approx(np.mean(scored), rel=1e-12)
        if truth is None:
            assert "iou" not in phase and "euler_true" not in phase
            continue
        t_planes = planes((truth == label) & inside, axis)
        assert phase["euler_true"] == [skimage_euler(t, connectivity) for t in t_planes], label
        iou = []
        for p, t in zip(p_planes, t_planes):
            union = np.count_nonzero(p | t)
            iou.append(np.count_nonzero(p & t) / union if union else None)
        assert phase["iou"] == iou
        defined = [v for v in iou if v is not None]
        if defined:
            assert (phase["iou_min"], phase["iou_max"]) == (min(defined), max(defined))
    if truth is not None:
        ignored = set(doc.get("ignore", []))
        for s, value in enumerate(per["mean_iou"]):
            ious = [p["iou"][s] for p in per["phases"] if p["label"] not in ignored and p["iou"][s] is not None]
            assert value == (pytest.approx(sum(ious) / len(ious), rel=1e-12) if ious else None)


def masked_reference(doc, pred, truth, inside, connectivity):
    """The document against NumPy and scikit-image with the mask applied (outside = background for Euler)."""
    labels = [p["label"] for p in doc["phases"]]
    n = int(np.count_nonzero(inside))
    assert doc["voxels"] == n
    assert doc["voxels_outside_mask"] == inside.size - n
    assert doc["confusion"] == numpy_confusion(truth[inside], pred[inside], labels)
    assert doc["accuracy"] == np.count_nonzero(truth[inside] == pred[inside]) / n
    for phase in doc["phases"]:
        label = phase["label"]
        assert phase["fraction_pred"] == np.count_nonzero(pred[inside] == label) / n
        assert phase["fraction_true"] == np.count_nonzero(truth[inside] == label) / n
        assert phase["euler_pred"] == skimage_euler((pred == label) & inside, connectivity), label
        assert phase["euler_true"] == skimage_euler((truth == label) & inside, connectivity), label


def cylinder(shape: tuple[int, int, int]) -> np.ndarray:
    """The cylindrical field of view of a core, axis along z."""
    y, x = np.ogrid[: shape[1], : shape[2]]
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    disc = (y - cy) ** 2 + (x - cx) ** 2 <= (min(shape[1:]) / 2 - 0.5) ** 2
    return np.broadcast_to(disc, shape).copy()


def two_phase_pair(shape=(12, 14, 16), seed=0):
    """A truth with a few blobs of phases 1 and 2 in phase 0, and a prediction that is off by a little."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    truth = np.zeros(shape, np.uint8)
    truth[(z - 5) ** 2 + (y - 6) ** 2 + (x - 5) ** 2 < 16] = 1
    truth[(z - 7) ** 2 + (y - 8) ** 2 + (x - 12) ** 2 < 9] = 2
    pred = truth.copy()
    pred[:, :, 3:5] = np.where(rng.random((shape[0], shape[1], 2)) < 0.5, 1, pred[:, :, 3:5])
    pred[rng.random(shape) < 0.02] = 2
    return pred, truth


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))
