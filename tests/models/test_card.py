"""rockseg.models.card and ``rockseg models``: a model file describes itself, card included."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rockseg.cli import app
from rockseg.errors import InputError
from rockseg.models import UNet, describe_model, read_model_file, resolve_model, save_model_file, set_model_card
from rockseg.vocabulary import DEFAULT_MODEL

runner = CliRunner()


@pytest.fixture
def model_file(tmp_path):
    net = UNet(spatial_dims=3, in_channels=1, classes=2, base_channels=2, depth=2)
    path = tmp_path / "m.pt"
    save_model_file(path, net, arch="unet", arch_args=dict(spatial_dims=3, in_channels=1, classes=2,
                                                           base_channels=2, depth=2),
                    spatial_dims=3, in_channels=1, phases={0: "pore", 1: "solid"},
                    normalization={"p_low": 0.0, "p_high": 1.0}, tile=32, halo=4)
    return path, sum(p.numel() for p in net.parameters())


def test_card_round_trip_and_description(model_file):
    path, parameters = model_file
    assert describe_model(path)["card"] == {}
    card = {"summary": "a test model", "figures": [{"case": "tiny", "pore_iou": 0.5}], "limits": ["none known"]}
    set_model_card(path, card)
    doc = describe_model(path)
    assert doc["card"] == card and doc["parameters"] == parameters and doc["tile"] == 32
    assert doc["phases"] == {"0": "pore", "1": "solid"} and not doc["default"]
    assert "state_dict" in read_model_file(path)  # the weights are still there
    with pytest.raises(InputError, match="not card keys"):
        set_model_card(path, {"colour": "red"})


def test_models_command(model_file):
    path, _ = model_file
    set_model_card(path, {"summary": "a test model", "limits": ["none known"]})
    shown = runner.invoke(app, ["models", str(path)])
    assert shown.exit_code == 0 and "a test model" in shown.output and "none known" in shown.output
    doc = json.loads(runner.invoke(app, ["models", str(path), "--json"]).output)
    assert doc["card"]["summary"] == "a test model" and doc["arch"] == "unet"
    assert doc["specks"] == 0 and "predict keeps every speck" in shown.output  # a model file without a choice
    from rockseg.models.modelfile import write_payload

    write_payload(path, {**read_model_file(path), "postprocess": {"specks": 8, "tried": []}})
    assert "predict removes specks of up to 8 voxels" in runner.invoke(app, ["models", str(path)]).output
    assert resolve_model(None) == resolve_model("default") == resolve_model(DEFAULT_MODEL.stem) == DEFAULT_MODEL
    bad = runner.invoke(app, ["models", "no-such-model"])
    assert bad.exit_code == 2 and "neither a file nor a shipped model" in bad.output


def test_the_default_model_describes_itself():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "default for rockseg predict" in result.output


def test_the_default_models_card_describes_this_file():
    """The card is attached by hand after training (``tools/make_default_model.py --card``): it must describe the
    shipped file's own training run and speck size, not another candidate's or the previous default's."""
    payload = read_model_file(DEFAULT_MODEL)
    card, run = payload["card"], payload["training"]
    text = json.dumps(card)
    assert f"{run['epochs_run']} epochs, {run['steps']} steps" in text
    assert f"validation mean IoU {run['best_val_mean_iou']:.3f}" in text
    assert f"trained on {run['tile_sources']} renderings" in card["summary"]
    assert f"up to {payload['postprocess']['specks']} voxels" in card["summary"]


def test_shipped_models_resolve_by_name():
    from rockseg.models import shipped_models
    from rockseg.vocabulary import SHIPPED_MODELS

    names = [p.stem for p in shipped_models()]
    assert names[0] == DEFAULT_MODEL.stem and "pore-solid-3d-realistic" in names
    assert resolve_model("pore-solid-3d-realistic") == SHIPPED_MODELS / "pore-solid-3d-realistic.pt"
    assert describe_model(resolve_model("pore-solid-3d-realistic"))["card"]["limits"]  # it carries its card
