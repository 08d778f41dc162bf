"""Loading torchvision-style encoder weights from a local file (2D, inflated to 3D), and freezing them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rockseg.errors import InputError, MissingInputError
from rockseg.models import build_model, freeze_encoder, load_encoder_weights, save_model_file
from tests.helpers import model_args, model_input


def _bn(state, prefix, width, gen):
    state[f"{prefix}.weight"] = torch.rand(width, generator=gen) + 0.5
    state[f"{prefix}.bias"] = torch.randn(width, generator=gen)
    state[f"{prefix}.running_mean"] = torch.randn(width, generator=gen)
    state[f"{prefix}.running_var"] = torch.rand(width, generator=gen) + 0.5
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def fake_torchvision_resnet(blocks=(2, 2, 2, 2), seed=0):
    """A state dict with the names and shapes of torchvision's resnet18 (resnet34 for blocks 3, 4, 6, 3)."""
    gen = torch.Generator().manual_seed(seed)
    state = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=gen)}
    _bn(state, "bn1", 64, gen)
    in_ch = 64
    for layer, (width, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(n):
            p = f"layer{layer}.{b}"
            state[f"{p}.conv1.weight"] = torch.randn(width, in_ch, 3, 3, generator=gen)
            _bn(state, f"{p}.bn1", width, gen)
            state[f"{p}.conv2.weight"] = torch.randn(width, width, 3, 3, generator=gen)
            _bn(state, f"{p}.bn2", width, gen)
            if b == 0 and layer > 1:
                state[f"{p}.downsample.0.weight"] = torch.randn(width, in_ch, 1, 1, generator=gen)
                _bn(state, f"{p}.downsample.1", width, gen)
            in_ch = width
    state["fc.weight"] = torch.randn(1000, 512, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return state


VGG11_BN = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
VGG16_BN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def fake_torchvision_vgg(cfg=VGG11_BN, seed=0):
    """A state dict with the names and shapes of torchvision's vgg11_bn ``features`` (conv, bn, relu; pool)."""
    gen = torch.Generator().manual_seed(seed)
    state, index, in_ch = {}, 0, 3
    for v in cfg:
        if v == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(v, in_ch, 3, 3, generator=gen)
        state[f"features.{index}.bias"] = torch.randn(v, generator=gen)
        _bn(state, f"features.{index + 1}", v, gen)
        index, in_ch = index + 3, v
    # the classifier is skipped whatever its shape: small stand-ins for torchvision's 25088 -> 4096 -> 1000
    for i in (0, 3, 6):
        state[f"classifier.{i}.weight"] = torch.randn(4, 4, generator=gen)
        state[f"classifier.{i}.bias"] = torch.randn(4, generator=gen)
    return state


FIRST_CONV = {"resnet18": "conv1.weight", "vgg11": "features.0.weight"}
FAKES = {"resnet18": fake_torchvision_resnet, "vgg11": fake_torchvision_vgg}


@pytest.mark.parametrize("encoder", ["resnet18", "vgg11"])
def test_encoder_weights_load_in_2d_exactly(encoder, tmp_path):
    fake = FAKES[encoder]()
    torch.save(fake, tmp_path / "w.pth")
    model = build_model("unet", **model_args(encoder, 2, depth=5))
    summary = load_encoder_weights(model, tmp_path / "w.pth")
    classifier = sorted(k for k in fake if k.startswith(("fc.", "classifier.")))
    assert summary == {"loaded": len(fake) - len(classifier), "inflated": 0, "channels_adapted": 1,
                       "skipped": classifier, "missing": []}
    got = model.encoder.state_dict()
    first = FIRST_CONV[encoder]
    # one grey channel: the sum of the RGB kernels
    assert got[first].shape[1] == 1 and torch.equal(got[first], fake[first].sum(1, keepdim=True))
    for key in got:
        if key != first:
            assert torch.equal(got[key], fake[key]), key

    # three input channels take the file's kernel unchanged; a shallower model skips the levels it lacks
    arch = "uresnet" if encoder == "resnet18" else "linknet"
    rgb = build_model(arch, **model_args(encoder, 2, in_channels=3, depth=2))
    summary = load_encoder_weights(rgb, tmp_path / "w.pth")
    assert summary["channels_adapted"] == 0 and summary["missing"] == []
    assert torch.equal(rgb.encoder.state_dict()[first], fake[first])
    deep = "layer2.0.conv1.weight" if encoder == "resnet18" else "features.15.weight"  # level 3
    assert deep in summary["skipped"] and deep not in rgb.encoder.state_dict()
    assert summary["loaded"] + len(summary["skipped"]) == len(fake)


@pytest.mark.parametrize("encoder", ["resnet18", "vgg11"])
def test_encoder_weights_inflate_to_3d(encoder, tmp_path):
    fake = FAKES[encoder]()
    torch.save({"state_dict": {f"module.{k}": v for k, v in fake.items()}, "epoch": 90}, tmp_path / "w.pth")
    model = build_model("unet", **model_args(encoder, 3, depth=2))
    summary = load_encoder_weights(model, tmp_path / "w.pth")
    got = model.encoder.state_dict()
    kernels = [k for k, v in got.items() if v.ndim == 5]
    assert summary["inflated"] == len(kernels) > 0 and summary["missing"] == []
    first = FIRST_CONV[encoder]
    for key in kernels:
        w = got[key]
        expect = fake[key].sum(1, keepdim=True) if key == first else fake[key]
        assert w.shape == (*expect.shape[:2], expect.shape[-1], *expect.shape[2:]), key
        # every depth slice is the same, and the slices sum back to the 2D kernel
        assert all(torch.equal(w[:, :, i], w[:, :, 0]) for i in range(w.shape[2])), key
        torch.testing.assert_close(w.sum(2), expect, rtol=1e-5, atol=1e-5)
    for key in set(got) - set(kernels):
        assert torch.equal(got[key], fake[key]), key


def test_inflated_encoder_answers_a_depth_constant_volume_like_the_2d_one(tmp_path):
    torch.save(fake_torchvision_resnet(), tmp_path / "w.pth")
    m2 = build_model("uresnet", **model_args("resnet18", 2, depth=1)).eval()
    m3 = build_model("uresnet", **model_args("resnet18", 3, depth=1)).eval()
    for m in (m2, m3):
        load_encoder_weights(m, tmp_path / "w.pth")
    image = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    volume = image.unsqueeze(2).expand(-1, -1, 16, -1, -1).contiguous()
    with torch.no_grad():
        f2 = m2.encoder(image)[1]
        f3 = m3.encoder(volume)[1]
    # conv1 (7 wide, stride 2) of output slices 2-6 reads only input slices 1-15: no zero padding along depth
    for z in range(2, 7):
        torch.testing.assert_close(f3[:, :, z], f2, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(f3[:, :, 0], f2, atol=1e-3)  # the padded first slice differs: the test can fail


def test_encoder_weights_from_a_rockseg_model_file(tmp_path):
    # "encoder."-prefixed keys (a rockseg model file): only the encoder is taken, the decoder keys are skipped
    torch.manual_seed(0)
    source = build_model("linknet", **model_args("resnet18", 2))
    save_model_file(tmp_path / "m.pt", source, arch="linknet", arch_args={}, spatial_dims=2, in_channels=1,
                    phases={0: "a"}, normalization={}, tile=16, halo=4)
    target = build_model("unetpp", **model_args("resnet18", 3))
    summary = load_encoder_weights(target, tmp_path / "m.pt")
    assert summary["channels_adapted"] == 0 and summary["missing"] == []
    assert any(k.startswith("decoders.") for k in summary["skipped"])
    for key, value in source.encoder.state_dict().items():
        got = target.encoder.state_dict()[key]
        torch.testing.assert_close(got.sum(2) if got.ndim == 5 else got, value, rtol=1e-5, atol=1e-6)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_bad_encoder_weight_files(tmp_path):
    model = build_model("unet", **model_args("resnet18", 2))
    with pytest.raises(MissingInputError, match=r"nope.pth do not exist: check the path"):
        load_encoder_weights(model, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk.pth do not load as a plain state dict"):
        load_encoder_weights(model, tmp_path / "junk.pth")
    evil = _Payload()
    evil.marker = str(tmp_path / "ran")
    torch.save(evil, tmp_path / "evil.pth")
    with pytest.raises(InputError, match="do not load as a plain state dict"):
        load_encoder_weights(model, tmp_path / "evil.pth")
    assert not (tmp_path / "ran").exists()

    bad = {
        "list.pth": ([torch.zeros(3)], "not a state dict of named tensors"),
        "meta.pth": ({"epoch": 3, "arch": "resnet18"}, "not a state dict of named tensors"),
        "other.pth": ({"backbone.stem.weight": torch.zeros(3)}, "no tensor of a resnet18 encoder"),
        "r34.pth": (fake_torchvision_resnet((3, 4, 6, 3)), r"hold 'layer1\.2\..*which a resnet18 encoder lacks"),
        "shape.pth": ({**fake_torchvision_resnet(), "layer1.0.conv1.weight": torch.zeros(32, 64, 3, 3)},
                      r"layer1\.0\.conv1\.weight has shape \(32, 64, 3, 3\) but .* needs \(64, 64, 3, 3\)"),
    }
    for name, (payload, message) in bad.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(InputError, match=message):
            load_encoder_weights(model, tmp_path / name)
    vgg11 = build_model("unet", **model_args("vgg11", 2))
    torch.save(fake_torchvision_vgg(VGG16_BN), tmp_path / "vgg16.pth")
    with pytest.raises(InputError, match="vgg16.pth"):
        load_encoder_weights(vgg11, tmp_path / "vgg16.pth")
    torch.save(fake_torchvision_vgg(), tmp_path / "vgg11.pth")
    with pytest.raises(InputError, match="no tensor of a resnet18 encoder .*'features.0.weight'"):
        load_encoder_weights(model, tmp_path / "vgg11.pth")

    for plain in (build_model("unet", spatial_dims=2), build_model("uresnet", spatial_dims=2)):
        with pytest.raises(InputError, match="has no backbone encoder .*build the model with an encoder"):
            load_encoder_weights(plain, tmp_path / "vgg11.pth")
        with pytest.raises(InputError, match="cannot freeze the encoder"):
            freeze_encoder(plain)


def test_freeze_encoder_trains_only_the_decoder(tmp_path):
    torch.manual_seed(0)
    torch.save(fake_torchvision_resnet(), tmp_path / "w.pth")
    model = build_model("unet", **model_args("resnet18", 2))
    load_encoder_weights(model, tmp_path / "w.pth")
    frozen = freeze_encoder(model)
    assert frozen == sum(p.numel() for p in model.encoder.parameters()) > 0
    assert not any(p.requires_grad for p in model.encoder.parameters())
    before = {k: v.clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = model_input(model, 2)
    F.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
    optimizer.step()
    for key, value in model.named_parameters():
        if key.startswith("encoder."):
            assert torch.equal(value, before[key]), key
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert "logits.weight" in changed and "stem.0.weight" in changed
