"""``rockseg train TILES -o MODEL``: a network trained on a tile set, written as one model file.

The command function is over 80 lines only because ``train`` has many options (one line each) and its recipes in
``--help``; its body builds a :class:`~rockseg.training.TrainConfig` and calls :func:`rockseg.training.train`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from rockseg.cli.common import JsonOption, app, command, log, out_console, tune_allocator
from rockseg.progress import interactive
from rockseg.vocabulary import ARCH_NAMES, Act, Augment, Loss, Norm, Optimizer, Precision, Sampling, Schedule

#: ``--arch``: the registered networks and ``pix2pix`` (a unet generator trained against a PatchGAN discriminator).
TrainArch = Enum("TrainArch", {name: name for name in (*ARCH_NAMES, "pix2pix")}, type=str)


@app.command()
@command
def train(
    tiles: Annotated[Path, typer.Argument(help="tile set written by 'rockseg tile'")],
    out: Annotated[Path, typer.Option("-o", "--out", help="model file to write (.pt); MODEL.log.jsonl, MODEL.ckpt and MODEL.curve.png go beside it")],
    dims: Annotated[Optional[int], typer.Option(min=2, max=3, help="2 or 3; must match the tile set (default: its dims)")] = None,
    arch: Annotated[Optional[TrainArch], typer.Option(help="network architecture (default unet, or the --init model's); pix2pix: a unet trained against a PatchGAN discriminator, written as a plain unet")] = None,
    init: Annotated[Optional[str], typer.Option(help="start from this rockseg model file or shipped model ('default', 'pore-solid-3d-realistic'...) instead of random weights; its network is used, a new output layer for another number of phases")] = None,
    gan_weight: Annotated[float, typer.Option(help="--arch pix2pix: weight of the adversarial term added to --loss")] = 0.01,
    freeze_encoder_epochs: Annotated[int, typer.Option(min=0, help="train only the decoder for the first N epochs (any network), then all of it")] = 0,
    encoder: Annotated[Optional[str], typer.Option(help="encoder backbone: resnet18, resnet34, vgg11 or vgg16 (default: the architecture's own)")] = None,
    encoder_weights: Annotated[Optional[Path], typer.Option(help="local file of pretrained encoder weights (nothing is downloaded)")] = None,
    freeze_encoder: Annotated[bool, typer.Option(help="train only the decoder; the encoder stays as loaded")] = False,
    base_channels: Annotated[Optional[int], typer.Option(min=1, help="channels of the first level (default 16, or the --init model's)")] = None,
    depth: Annotated[Optional[int], typer.Option(min=1, max=6, help="down-sampling steps (default: planned from the tile size, pooling down to a 4-voxel bottleneck: 48 -> 3, 64 -> 4; or the --init model's)")] = None,
    norm: Annotated[Optional[Norm], typer.Option(help="normalisation layers (default batch, or the --init model's)")] = None,
    act: Annotated[Optional[Act], typer.Option(help="activation (default relu, or the --init model's)")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="maximum epochs (default 50; no limit with --max-minutes: the time budget decides)")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="stop after this wall time, keeping the best model")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="tiles per forward pass (per process under torchrun)")] = 4,
    accumulate: Annotated[int, typer.Option(min=1, help="forward passes summed into each optimizer step")] = 1,
    fraction: Annotated[float, typer.Option(help="share of the training tiles used per epoch, 0 < F <= 1 (huge tile sets)")] = 1.0,
    steps_per_epoch: Annotated[Optional[int], typer.Option(min=1, help="optimizer steps per epoch (default: one pass over the stored training tiles)")] = None,
    sampling: Annotated[Sampling, typer.Option(help="random: fresh patches from the tile set's training regions every step (fixed if it has none); fixed: its stored patches")] = Sampling.random,
    lr: Annotated[float, typer.Option(help="(initial) learning rate")] = 1e-3,
    optimizer: Annotated[Optimizer, typer.Option(help="adam, adamw or sgd (momentum 0.9, Nesterov)")] = Optimizer.adam,
    weight_decay: Annotated[Optional[float], typer.Option(help="weight decay (default 0; 0.01 for adamw)")] = None,
    schedule: Annotated[Schedule, typer.Option(help="poly: lr*(1-progress)^0.9 every step, progress through --max-minutes if given, else --epochs; none: constant; plateau: halve on a flat val IoU; exp: decay to --min-lr by the last epoch; cosine: warm restarts")] = Schedule.poly,
    min_lr: Annotated[float, typer.Option(help="floor of the learning-rate schedule (where poly ends)")] = 1e-5,
    cosine_epochs: Annotated[int, typer.Option(min=1, help="epochs between warm restarts of --schedule cosine")] = 10,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="epochs of linear learning-rate warm-up")] = 0,
    patience: Annotated[int, typer.Option(min=0, help="epochs without improvement before --schedule plateau lowers the rate")] = 5,
    loss: Annotated[str, typer.Option(help=f"{', '.join(t.value for t in Loss)}, or a '+'-sum: ce+dice, ce+logiou, focal+dice, ce+dice+cldice (topology-aware)...")] = "ce+dice",
    focal_gamma: Annotated[float, typer.Option(help="focusing exponent of the focal loss")] = 2.0,
    iou_alpha: Annotated[float, typer.Option(help="weight of the logiou term (ce+logiou = CE - alpha log soft IoU)")] = 1.0,
    class_weights: Annotated[Optional[str], typer.Option(help="for ce and focal: 'balanced' (inverse frequency) or one per class, e.g. 1,2,5,5")] = None,
    augment: Annotated[Augment, typer.Option(help="basic: flips and 90-degree rotations; strong: also small rotations, intensity, noise, blur")] = Augment.basic,
    precision: Annotated[Precision, typer.Option(help="auto: bf16 on CUDA, float32 on a CPU (bf16 training diverged there)")] = Precision.auto,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads (default: all cores)")] = None,
    loader_threads: Annotated[int, typer.Option(min=1, help="threads preparing batches while the network steps")] = 1,
    resume: Annotated[bool, typer.Option(help="continue from MODEL.ckpt if it is there (same settings), else start")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing model file and checkpoint")] = False,
    json_out: JsonOption = False,
) -> dict | None:
    """Train a network on a tile set; keeps the best model by validation mean IoU.

    \b
    By default each step trains on fresh random patches from the tile set's
    training regions (class-balanced as the tile set was; --sampling fixed
    reuses its stored patches), and the rate decays step by step to --min-lr
    at the end of --max-minutes, or of --epochs without it (--schedule poly).
    Validation always scores the tile set's stored validation patches. At the
    end the kept weights choose the speck size predict removes (0-32 voxels, by
    the error in the number of pieces of each phase on those patches).

    \b
    Recipes (measured: README, "Accuracy"):
      3D UNet on sub-volumes, the defaults within a time budget (best measured on
      realistic 3-phase CT in 15 min: pore IoU 0.88; ce+dice, fresh random
      patches, poly decay over the budget, Euler-aware checkpoint, depth planned):
        rockseg tile image.zarr labels.zarr -o t3.zarr --dims 3 --size 48
        rockseg train t3.zarr -o unet3d.pt --max-minutes 15
      The topology term (--loss ce+dice+cldice) did not help there (0.86).
    \b
      2D UNet on slices (base 32, ELU, cross-entropy + log IoU, Adam 1e-3 decayed to 1e-5):
        rockseg tile image.zarr labels.zarr -o t2.zarr --dims 2 --size 64
        rockseg train t2.zarr -o unet2d.pt --arch unet --base-channels 32 --act elu
          --loss ce+logiou --schedule exp --min-lr 1e-5 --fraction 0.2 --epochs 100
    \b
      UNet with a pretrained encoder (a local weights file), frozen, rare phases weighted:
        rockseg train t2.zarr -o unet-resnet34.pt --arch unet --encoder resnet34
          --encoder-weights resnet34.pth --freeze-encoder --loss focal+dice
          --class-weights balanced --schedule cosine --augment strong
    \b
      Fine-tune the shipped 3D model on a few labelled slices of your scan (the
      other voxels 255: unlabelled), the encoder frozen for the first 5 epochs:
        rockseg tile image.zarr labels.zarr -o t3.zarr --dims 3 --size 64 --unlabelled 255
        rockseg train t3.zarr -o tuned.pt --init default --freeze-encoder-epochs 5 --max-minutes 20
    \b
      pix2pix (a UNet against a PatchGAN discriminator; writes a plain unet):
        rockseg train t2.zarr -o p2p.pt --arch pix2pix --gan-weight 0.01 --max-minutes 30
    \b
    Several GPUs or processes: torchrun --standalone --nproc_per_node 4 -m rockseg train ...
    A killed job continues where its last epoch ended: the same command plus --resume.
    """
    from rockseg.training import TrainConfig, train as run

    tune_allocator()
    config = TrainConfig(
        arch=_value(arch), init=init, freeze_encoder_epochs=freeze_encoder_epochs, gan_weight=gan_weight, encoder=encoder, encoder_weights=str(encoder_weights) if encoder_weights else None,
        freeze_encoder=freeze_encoder, base_channels=base_channels, depth=depth, norm=_value(norm), act=_value(act),
        epochs=epochs, max_minutes=max_minutes, batch_size=batch_size, accumulate=accumulate, fraction=fraction,
        steps_per_epoch=steps_per_epoch, sampling=sampling.value, lr=lr, optimizer=optimizer.value,
        weight_decay=weight_decay, schedule=schedule.value, min_lr=min_lr, cosine_epochs=cosine_epochs,
        warmup_epochs=warmup_epochs, patience=patience, loss=loss, focal_gamma=focal_gamma,
        iou_alpha=iou_alpha, class_weights=class_weights, augment=augment.value, precision=precision.value,
        device=device, seed=seed, num_threads=threads, loader_threads=loader_threads,
    )
    summary = run(tiles, out, config=config, dims=dims, progress=interactive(), log=log, overwrite=overwrite,
                  resume=resume)
    if summary["rank"] == 0:  # under torchrun, one line for the job, not one per process
        out_console.print(
            f"wrote {out}: best validation mean IoU {summary['best_val_mean_iou']:.4f} at epoch "
            f"{summary['best_epoch']} ({summary['epochs']} epochs, {summary['seconds']:.0f} s)"
        )
    return summary if summary["rank"] == 0 else None


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else str(choice.value)
