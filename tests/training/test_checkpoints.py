"""Tests of rockseg.training.checkpoints: a resumed run equals a straight one, and resuming needs the same settings
(checkpoints from before --sampling resume with fixed sampling)."""

from __future__ import annotations

import json

import pytest
import torch

from rockseg.errors import InputError, OutputExistsError
from rockseg.training import TrainConfig, train
from rockseg.training import settings
from tests.training.helpers import TINY, weights


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
    assert "resuming" in lines[0] and len(lines) == 4 and lines[-1].startswith("specks: ")
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
    ckpt = settings.checkpoint_path_for(out)
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


def test_checkpoints_from_before_sampling_resume_with_fixed_sampling(tilesets, tmp_path):
    train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "sampling": "fixed"}))
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    del ckpt["settings"]["sampling"]  # as rockseg wrote them before --sampling: they trained on the stored tiles
    torch.save(ckpt, tmp_path / "m.ckpt")
    with pytest.raises(InputError, match="--sampling 'fixed', not 'random'"):
        train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "epochs": 2}), resume=True)
    s = train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "epochs": 2, "sampling": "fixed"}),
              resume=True)
    assert s["resumed_from"] == 1 and s["epochs_run"] == 2
