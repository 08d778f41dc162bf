"""Tests of rockseg.training.curve: the training curve is a PNG of the expected size, written atomically."""

from __future__ import annotations

import struct

from rockseg.training import write_curve


def test_write_curve_writes_a_png_and_nothing_else(tmp_path):
    history = [
        {"epoch": 1, "loss": 0.7, "val_mean_iou": 0.4,
         "val_iou": [{"label": 0, "name": "pore", "iou": 0.5}, {"label": 1, "name": "grain", "iou": None}]},
        {"epoch": 2, "loss": 0.5, "val_mean_iou": 0.6,
         "val_iou": [{"label": 0, "name": "pore", "iou": 0.6}, {"label": 1, "name": "grain", "iou": 0.6}]},
    ]
    out = write_curve(tmp_path / "m.curve.png", history, title="m.pt: unet, ce")
    png = out.read_bytes()
    assert out == tmp_path / "m.curve.png" and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1000, 400)  # 10 x 4 inches at 100 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["m.curve.png"]  # no partial file left behind
