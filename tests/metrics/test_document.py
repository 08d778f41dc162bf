"""The score document: its layout, the agreement metrics worked out by hand, ignored labels, and its CSV form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rockseg.metrics import euler_number, score_csv, score_volumes
from tests.metrics.references import check_per_slice, parse_csv, random_labels, two_phase_pair


def test_document_layout_and_agreement_metrics():
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 1]], np.uint8)
    doc = score_volumes(pred, truth, phases={0: "pore", 2: "clay", 5: "pyrite"}, block_shape=(1, 3))
    assert list(doc) == ["phases", "mean_iou", "accuracy", "confusion", "connectivity", "voxels"]
    assert [list(p) for p in doc["phases"]] == [
        ["label", "name", "iou", "dice", "precision", "recall", "fraction_pred", "fraction_true", "euler_pred",
         "euler_true"]
    ] * 4
    assert [(p["label"], p["name"]) for p in doc["phases"]] == [(0, "pore"), (1, "phase1"), (2, "clay"), (5, "pyrite")]
    # rows = truth, columns = prediction
    assert doc["confusion"] == [[2, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    pore, phase1, clay, pyrite = doc["phases"]
    assert (pore["iou"], pore["dice"], pore["precision"], pore["recall"]) == (2 / 4, 4 / 6, 2 / 3, 2 / 3)
    assert (phase1["iou"], phase1["precision"], phase1["recall"]) == (3 / 4, 3 / 4, 1.0)
    assert (clay["iou"], clay["dice"], clay["precision"], clay["recall"]) == (1 / 2, 2 / 3, 1.0, 1 / 2)
    # A phase in neither volume: no ratio is defined, and it does not drag mean_iou down.
    assert {k: pyrite[k] for k in ("iou", "dice", "precision", "recall")} == dict.fromkeys(
        ("iou", "dice", "precision", "recall")
    )
    assert (pyrite["fraction_pred"], pyrite["euler_pred"], pyrite["euler_true"]) == (0.0, 0, 0)
    assert doc["mean_iou"] == pytest.approx((1 / 2 + 3 / 4 + 1 / 2) / 3, abs=0, rel=1e-15)
    assert doc["accuracy"] == 6 / 8
    assert (doc["connectivity"], doc["voxels"]) == (3, 8)
    assert json.loads(json.dumps(doc)) == doc


def test_phase_missed_by_the_prediction():
    truth = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.zeros_like(truth)
    (_, missed) = score_volumes(pred, truth)["phases"]
    assert (missed["iou"], missed["dice"], missed["precision"], missed["recall"]) == (0.0, 0.0, None, 0.0)
    assert (missed["fraction_pred"], missed["fraction_true"], missed["euler_pred"], missed["euler_true"]) == (
        0.0,
        0.5,
        0,
        1,
    )


def test_document_without_truth():
    pred = np.array([[[0, 3, 3]]], np.uint16)
    doc = score_volumes(pred, phases={1: "quartz"}, connectivity=1)
    assert list(doc) == ["phases", "connectivity", "voxels"]
    assert doc["phases"] == [
        {"label": 0, "name": "phase0", "fraction_pred": 1 / 3, "euler_pred": 1},
        {"label": 1, "name": "quartz", "fraction_pred": 0.0, "euler_pred": 0},
        {"label": 3, "name": "phase3", "fraction_pred": 2 / 3, "euler_pred": 1},
    ]
    assert (doc["connectivity"], doc["voxels"]) == (1, 3)


def test_ignore_leaves_a_label_out_of_the_mean_only():
    truth = np.array([[0, 0, 1, 1, 2, 2]], np.uint8)
    pred = np.array([[0, 1, 1, 1, 2, 0]], np.uint8)
    plain = score_volumes(pred, truth)
    doc = score_volumes(pred, truth, ignore=[0], per_slice=None)
    assert [p["label"] for p in doc["phases"]] == [0, 1, 2]  # still reported
    assert doc["phases"] == plain["phases"]
    ious = {p["label"]: p["iou"] for p in doc["phases"]}
    assert ious == {0: 1 / 3, 1: 2 / 3, 2: 1 / 2}
    assert plain["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3, rel=1e-15)
    assert doc["mean_iou"] == pytest.approx((2 / 3 + 1 / 2) / 2, rel=1e-15)
    assert doc["ignore"] == [0] and "ignore" not in plain
    assert score_volumes(pred, truth, ignore=[0, 1, 2])["mean_iou"] is None
    assert score_volumes(pred, truth, ignore=[9])["mean_iou"] == plain["mean_iou"]  # absent label: no effect


def test_per_slice_mean_iou_leaves_ignored_labels_out():
    rng = np.random.default_rng(13)
    truth = random_labels(rng, (5, 6, 7), [1, 1, 1])
    pred = np.where(rng.random(truth.shape) < 0.3, 0, truth).astype(np.uint8)
    doc = score_volumes(pred, truth, ignore=[0], per_slice="z", block_shape=(2, 4, 4))
    check_per_slice(doc, pred, truth, np.ones(truth.shape, bool), 0)


# ---------------------------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------------------------


def test_csv_of_a_hand_made_document():
    doc = {
        "phases": [
            {"label": 0, "name": "pore", "iou": 0.5, "dice": 2 / 3, "precision": None, "recall": 1.0,
             "fraction_pred": 0.25, "fraction_true": 0.5, "euler_pred": -3, "euler_true": 2},
            {"label": 7, "name": "clay, wet", "iou": None, "dice": None, "precision": None, "recall": None,
             "fraction_pred": 0.0, "fraction_true": 0.0, "euler_pred": 0, "euler_true": 0},
        ],
        "mean_iou": 0.5, "accuracy": 0.75, "confusion": [[1, 1], [0, 0]], "connectivity": 3, "voxels": 4,
        "ignore": [7],
    }
    assert score_csv(doc) == (
        "label,name,iou,dice,precision,recall,fraction_pred,fraction_true,euler_pred,euler_true,ignored\n"
        "0,pore,0.5,0.6666666666666666,,1.0,0.25,0.5,-3,2,0\n"
        '7,"clay, wet",,,,,0.0,0.0,0,0,1\n'
    )


def test_csv_round_trips_every_number_of_a_score():
    pred, truth = two_phase_pair()
    doc = score_volumes(pred, truth, per_slice="y", phases={0: "pore", 1: "grain", 2: "clay"})
    rows = parse_csv(score_csv(doc))
    assert [r["name"] for r in rows] == ["pore", "grain", "clay"]
    per = {p["label"]: p for p in doc["per_slice"]["phases"]}
    for row, phase in zip(rows, doc["phases"]):
        for key, value in phase.items():
            assert row[key] == ("" if value is None else str(value)), key
            if isinstance(value, float):
                assert float(row[key]) == value  # full precision
        assert float(row["slice_iou_mean"]) == per[phase["label"]]["iou_mean"]
        assert int(row["slice_euler_true_min"]) == per[phase["label"]]["euler_true_min"]
    assert "ignored" not in rows[0]
    alone = parse_csv(score_csv(score_volumes(pred)))
    assert list(alone[0]) == ["label", "name", "fraction_pred", "euler_pred"]
    assert [int(r["euler_pred"]) for r in alone] == [euler_number(pred == label) for label in (0, 1, 2)]
