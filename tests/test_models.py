"""The network families (2D and 3D from one definition), encoders and their weights, and model files."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rockseg
from rockseg.errors import InputError, MissingInputError
from rockseg.models import (
    ARCHITECTURES,
    ENCODERS,
    UNet,
    build_model,
    centre_logits,
    fold_batch_norm,
    freeze_encoder,
    load_encoder_weights,
    load_model,
    model_from_payload,
    read_model_file,
    save_model_file,
    tile_multiple,
)

DEFAULT_MODEL = Path(rockseg.__file__).parent / "data" / "pore-solid-3d.pt"


@pytest.fixture(autouse=True)
def one_thread():
    # the networks here are tiny: with threads, start-up and the CPU shared with other jobs cost more than they give
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# every architecture with each kind of encoder it takes: its own (None), a ResNet and a VGG
CASES = [
    ("unet", None), ("unet", "resnet18"), ("unet", "vgg11"),
    ("resunet", None),
    ("uresnet", None), ("uresnet", "resnet18"),
    ("linknet", None), ("linknet", "resnet18"), ("linknet", "vgg11"),
    ("unetpp", None), ("unetpp", "resnet18"), ("unetpp", "vgg11"),
    ("deeplabv3plus", None), ("deeplabv3plus", "resnet18"), ("deeplabv3plus", "vgg11"),
    ("pspnet", None), ("pspnet", "resnet18"), ("pspnet", "vgg11"),
]
# DeepLabV3+ and PSPNet always build the whole backbone (its later levels dilated): 3D ones are ~30 M parameters
HEAVY = {("deeplabv3plus", "resnet18"), ("deeplabv3plus", "vgg11"), ("pspnet", "resnet18"), ("pspnet", "vgg11")}


def _case_params():
    for arch, encoder in CASES:
        for dims in (2, 3):
            slow = dims == 3 and (arch, encoder) in HEAVY
            yield pytest.param(arch, encoder, dims, id=f"{arch}-{encoder}-{dims}d",
                               marks=[pytest.mark.slow] if slow else [])


def _args(encoder, dims, **extra):
    args = dict(spatial_dims=dims, in_channels=1, classes=3, base_channels=4, depth=3, norm="batch", act="relu")
    if encoder is not None:
        args["encoder"] = encoder
    return {**args, **extra}


def _input(model, dims, batch=2, seed=0):
    # edges 1, 2 and 3 times the divisor: a non-cubic tile catches an axis mix-up in the decoder
    d = model.divisor
    shape = (2 * d, d, 3 * d) if dims == 3 else (2 * d, 3 * d)
    return torch.randn(batch, 1, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,encoder,dims", list(_case_params()))
def test_forward_train_and_model_file(arch, encoder, dims, tmp_path):
    torch.manual_seed(0)
    args = _args(encoder, dims)
    model = build_model(arch, **args)
    assert isinstance(model.divisor, int) and model.divisor == 8
    assert tile_multiple(arch, args) == model.divisor
    x = _input(model, dims)

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


@pytest.mark.parametrize("dims", [2, 3])
def test_fold_batch_norm_keeps_the_outputs(dims):
    import copy

    torch.manual_seed(3)
    for arch, encoder in CASES:
        if (arch, encoder) in HEAVY:
            continue
        model = build_model(arch, **_args(encoder, dims, depth=2))
        for m in model.modules():  # statistics far from the initial ones, so that folding changes the weights
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 3)
                m.weight.data.uniform_(0.5, 2)
                m.bias.data.uniform_(-1, 1)
        model.eval()
        folded = copy.deepcopy(model)
        n = fold_batch_norm(folded)
        assert n > 0, arch
        bns = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
        assert bns == sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) - n
        x = _input(model, dims, seed=4) if dims == 2 else torch.randn(1, 1, 16, 8, 24)
        with torch.inference_mode():
            ref, out = model(x), folded(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4, msg=f"{arch} {encoder}")


def _randomise_batch_norm(model):
    """Statistics far from the initial ones, so that the network's output varies across a tile."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)


@pytest.mark.parametrize("dims", [2, 3])
def test_centre_logits_equal_the_cut_output_and_skip_the_margin(dims):
    """The centre of a tile (all prediction keeps) is the same whether the decoder computes the margin or not;
    UNet-family networks run their full-resolution stage on the tile less margin - 2 per face."""
    torch.manual_seed(5)
    margin = (7, 4, 10) if dims == 3 else (9, 5)
    for arch, encoder in CASES:
        if (arch, encoder) in HEAVY:
            continue
        model = build_model(arch, **_args(encoder, dims, depth=2))
        _randomise_batch_norm(model)
        model.eval()
        fold_batch_norm(model)
        d = model.divisor
        x = torch.randn(2, 1, *((8 * d, 6 * d, 10 * d) if dims == 3 else (10 * d, 6 * d)))
        seen = []
        if arch in ("unet", "uresnet", "resunet"):  # the full-resolution stage: the last one the decoder runs
            first_conv = next(m for m in model.ups[-1].modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
            first_conv.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[2:])))
        with torch.inference_mode():
            whole = model(x)
            centre = centre_logits(model, x, margin)
        cut = whole[(slice(None), slice(None), *(slice(m, n - m) for m, n in zip(margin, x.shape[2:])))]
        assert centre.shape == cut.shape, (arch, encoder)
        torch.testing.assert_close(centre, cut, rtol=1e-5, atol=1e-5, msg=f"{arch} {encoder}")
        assert torch.equal(centre.argmax(1), cut.argmax(1)), (arch, encoder)
        if arch in ("unet", "uresnet", "resunet"):
            assert seen[-1] == tuple(n - 2 * (m - 2) for n, m in zip(x.shape[2:], margin)), (arch, encoder)


def test_centre_logits_cut_the_whole_output_where_the_decoder_is_not_local():
    """Instance norm takes statistics over the whole tile, so the margin changes the centre: computed whole."""
    torch.manual_seed(6)
    model = build_model("unet", **_args(None, 3, norm="instance", depth=2)).eval()
    x = torch.randn(1, 1, 16, 20, 24)
    with torch.inference_mode():
        torch.testing.assert_close(centre_logits(model, x, (3, 4, 5)), model(x)[:, :, 3:13, 4:16, 5:19],
                                   rtol=0, atol=0)


def test_fold_batch_norm_leaves_other_norms_and_refuses_training_mode():
    model = build_model("unet", **_args(None, 2, norm="instance")).eval()
    assert fold_batch_norm(model) == 0
    with pytest.raises(ValueError, match="eval"):
        fold_batch_norm(build_model("unet", **_args(None, 2)).train())


@pytest.mark.parametrize("dims", [2, 3])
def test_other_norms_and_activations(dims):
    torch.manual_seed(1)
    for arch, encoder in CASES:
        if (arch, encoder) in HEAVY or encoder == "vgg11":
            continue
        for norm, act in (("instance", "elu"), ("none", "relu")):
            model = build_model(arch, **_args(encoder, dims, norm=norm, act=act, depth=2))
            # instance norm needs more than one voxel at the deepest level
            x = _input(model, dims, seed=2) if dims == 2 else torch.randn(2, 1, 16, 8, 12)
            out = model(x)
            assert out.shape == (2, 3, *x.shape[2:]), (arch, encoder, norm)
            out.square().mean().backward()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_every_architecture_is_covered_and_takes_the_common_arguments():
    assert {arch for arch, _ in CASES} == set(ARCHITECTURES)
    assert ENCODERS == ("resnet18", "resnet34", "vgg11", "vgg16")
    common = {"spatial_dims": 3, "in_channels": 1, "classes": 2, "base_channels": 16, "norm": "batch", "act": "relu"}
    for arch, factory in ARCHITECTURES.items():
        params = inspect.signature(factory).parameters
        assert {k: params[k].default for k in common} == common, arch
        assert params["depth"].default == 3, arch
        assert ("encoder" in params) == (arch != "resunet"), arch


def _tile_multiple_cases():
    for arch in ARCHITECTURES:
        low = 2 if arch in ("deeplabv3plus", "pspnet") else 1
        for depth in range(low, 6):
            for dims in (2, 3):
                yield arch, dict(spatial_dims=dims, base_channels=2, depth=depth)
            # the encoders' divisors do not depend on the dimension; no norm keeps the meta-device forward fast
            for encoder in ([] if arch == "resunet" else ["resnet34"] if arch == "uresnet" else ["resnet34", "vgg16"]):
                yield arch, dict(spatial_dims=2, depth=depth, norm="none", encoder=encoder)


def test_tile_multiple_equals_the_divisor_the_network_needs():
    cases = list(_tile_multiple_cases())
    # depths x (two dims + the encoders): unet/linknet/unetpp, deeplabv3plus/pspnet, uresnet, resunet
    assert len(cases) == 3 * 5 * (2 + 2) + 2 * 4 * (2 + 2) + 5 * (2 + 1) + 5 * 2
    for arch, args in cases:
        m = tile_multiple(arch, args)
        assert m == 2 ** args["depth"], (arch, args)
        if "encoder" in args:
            # a meta-device build allocates nothing; UNet-like decoders check shapes as they concatenate skips
            with torch.device("meta"):
                model = build_model(arch, **args).eval()
            assert model.divisor == m
            if arch in ("deeplabv3plus", "pspnet") or args["depth"] != 5:
                continue
        else:
            model = build_model(arch, **args).eval()
            assert model.divisor == m
        if args["spatial_dims"] == 3 and args["depth"] > 2:
            continue  # the same code as 2D; keeps the test fast
        # edges of one, two and three divisors come back at the input's shape
        x = torch.zeros(1, 1, *((m, 3 * m) if args["spatial_dims"] == 2 else (m, 2 * m, m)),
                        device=next(model.parameters()).device)
        with torch.no_grad():
            assert model(x).shape[2:] == x.shape[2:], (arch, args)
    assert tile_multiple("unet", {}) == 8  # the defaults
    assert tile_multiple("unet", read_model_file(DEFAULT_MODEL)["arch_args"]) == 8


def test_plain_unet_keeps_its_parameter_names_and_old_model_files_load():
    keys = set(UNet(spatial_dims=2, base_channels=4, depth=2).state_dict())
    assert {k.split(".")[0] for k in keys} == {"enc1", "downs", "bottleneck", "ups", "logits"}
    assert {"enc1.0.weight", "enc1.1.running_mean", "downs.0.1.3.weight", "bottleneck.1.0.weight",
            "ups.0.up.weight", "ups.1.conv.4.bias", "logits.weight"} <= keys
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"the shipped model {DEFAULT_MODEL} is absent")
    model = load_model(DEFAULT_MODEL)  # load_state_dict is strict: every name must still match
    assert isinstance(model, UNet) and model.encoder_name is None
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 16, 16)).shape[2:] == (16, 16, 16)


# ------------------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_bad_arguments_are_input_errors(arch):
    with pytest.raises(InputError, match=r"unknown normalisation 'bach' \(did you mean 'batch'\?\)"):
        build_model(arch, norm="bach")
    with pytest.raises(InputError, match="unknown activation 'gelu'.*relu, elu"):
        build_model(arch, act="gelu")
    with pytest.raises(InputError, match="spatial_dims must be 2 or 3, not 4"):
        build_model(arch, spatial_dims=4)
    with pytest.raises(InputError, match="classes must be a positive integer, not 0"):
        build_model(arch, classes=0)
    with pytest.raises(InputError, match="depth must be"):
        build_model(arch, depth=0)
    if arch != "resunet":
        with pytest.raises(InputError, match=r"unknown encoder 'resnet-18' \(did you mean 'resnet18'\?\)"):
            build_model(arch, encoder="resnet-18")
        with pytest.raises(InputError, match="depth must be between .* and 5, not 6"):
            build_model(arch, encoder="resnet18", depth=6)
    else:
        with pytest.raises(InputError, match="takes no argument 'encoder'"):
            build_model(arch, encoder="resnet18")
    with pytest.raises(InputError, match="takes no argument 'widht'"):
        build_model(arch, widht=3)


def test_bad_architecture_specific_arguments():
    with pytest.raises(InputError, match=r"unknown architecture 'unet\+\+' \(did you mean 'unetpp'\?\)"):
        build_model("unet++")
    with pytest.raises(InputError, match="uresnet takes a ResNet encoder, not 'vgg11'"):
        build_model("uresnet", encoder="vgg11")
    for arch in ("deeplabv3plus", "pspnet"):
        with pytest.raises(InputError, match="depth must be between 2 and 5, not 1"):
            build_model(arch, depth=1)
    with pytest.raises(InputError, match="atrous_rates must be positive integers"):
        build_model("deeplabv3plus", atrous_rates=(0, 2))
    with pytest.raises(InputError, match="bins must be positive integers"):
        build_model("pspnet", bins=())
    with pytest.raises(InputError, match="unknown normalisation"):
        tile_multiple("linknet", {"norm": "group"})


# ---------------------------------------------------------------------------------------- encoder weights


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
    model = build_model("unet", **_args(encoder, 2, depth=5))
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
    rgb = build_model(arch, **_args(encoder, 2, in_channels=3, depth=2))
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
    model = build_model("unet", **_args(encoder, 3, depth=2))
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
    m2 = build_model("uresnet", **_args("resnet18", 2, depth=1)).eval()
    m3 = build_model("uresnet", **_args("resnet18", 3, depth=1)).eval()
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
    source = build_model("linknet", **_args("resnet18", 2))
    save_model_file(tmp_path / "m.pt", source, arch="linknet", arch_args={}, spatial_dims=2, in_channels=1,
                    phases={0: "a"}, normalization={}, tile=16, halo=4)
    target = build_model("unetpp", **_args("resnet18", 3))
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
    model = build_model("unet", **_args("resnet18", 2))
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
    vgg11 = build_model("unet", **_args("vgg11", 2))
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
    model = build_model("unet", **_args("resnet18", 2))
    load_encoder_weights(model, tmp_path / "w.pth")
    frozen = freeze_encoder(model)
    assert frozen == sum(p.numel() for p in model.encoder.parameters()) > 0
    assert not any(p.requires_grad for p in model.encoder.parameters())
    before = {k: v.clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = _input(model, 2)
    F.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
    optimizer.step()
    for key, value in model.named_parameters():
        if key.startswith("encoder."):
            assert torch.equal(value, before[key]), key
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert "logits.weight" in changed and "stem.0.weight" in changed


# ------------------------------------------------------------------------------ every network through the CLI path
@pytest.fixture(scope="module")
def tiny_tile_sets(tmp_path_factory):
    """A 2D and a 3D tile set of edge 16 from a small two-phase volume whose grey values follow the labels."""
    import numpy as np
    import zarr

    from rockseg.tiling import make_tiles

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
            config=PredictConfig(tile=40, halo=0, block=40, device="cpu"))
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
