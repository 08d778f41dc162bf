"""The settings of a prediction run (:class:`PredictConfig`) and their defaults; plain data, no torch."""

from __future__ import annotations

from dataclasses import dataclass

from rockseg.vocabulary import DEFAULT_MODEL

DEFAULT_BLOCK = 128


@dataclass(frozen=True)
class PredictConfig:
    """Settings of a prediction run; the ones that change the result are recorded in the output store.

    Attributes
    ----------
    tile, halo : tile edge and halo in voxels; ``None`` takes the model's recommendation.
    block : block (and output chunk) edge in voxels; ``None`` picks a multiple of the tile step near 128.
    shard_blocks : blocks per edge of a shard of the output, the unit of work and of completion records
        (``K``: each shard file holds up to K x K x K blocks); ``None``: the smallest ``K`` that keeps the output at
        most :data:`~rockseg.inference.store.MAX_SHARDS` shard files (1 for volumes up to ~16,000 blocks).
    batch_size : tiles per forward pass.
    device : ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : ``"auto"`` (bf16 autocast on CUDA, float32 on CPU), ``"float32"`` or ``"bf16"``.
    normalization : ``"volume"`` (the volume's own global statistics, from its attributes or one pass) or
        ``"model"`` (the training image's statistics stored in the model).
    part : ``(i, n)``: run only blocks ``i, i + n, i + 2n...`` (0-based ``i``), for job arrays
        (:func:`~rockseg.inference.grid.parse_part` reads ``"I/N"``).
    workers : blocks in flight at once (reading the next block overlaps the model's work on this one).
    probabilities : path of an optional class-probability store, (C, *volume shape) uint8 (probability * 255).
    tta : test-time augmentation: average the class probabilities over all flips of each tile (8 in 3D, 4 in 2D).
    crop : ``"Z0:Z1,Y0:Y1,X0:X1"``: segment only this region (the output has its shape; context outside it is
        still read from the volume).
    mask : path of a Zarr array of the volume's shape (or the crop's); nothing is computed where it is 0, and the
        labels there are :data:`~rockseg.vocabulary.OUTSIDE` (255).
    axis : for a 2D model on a 3D volume, the axis it runs along (``"z"``, ``"y"`` or ``"x"``).
    scheduler : address of a Dask distributed scheduler to run the blocks on (default: threads in this process).
    devices : several devices of this node, e.g. ``("cuda:0", "cuda:1")``: one worker process per device, each
        holding the model once (a local Dask cluster; ``device`` is then ignored).
    specks : remove isolated pieces of a phase of at most this many voxels (:func:`rockseg.specks.remove_specks`;
        pieces crossing a block face are kept); ``None`` takes the model's choice, made on its validation tiles
        (0 for a model file without one), and 0 removes nothing.
    """

    tile: int | None = None
    halo: int | None = None
    block: int | None = None
    shard_blocks: int | None = None
    batch_size: int = 4
    device: str = "auto"
    precision: str = "auto"
    normalization: str = "volume"
    part: tuple[int, int] | None = None
    workers: int = 2
    probabilities: str | None = None
    tta: bool = False
    crop: str | None = None
    mask: str | None = None
    axis: str = "z"
    scheduler: str | None = None
    devices: tuple[str, ...] | None = None
    specks: int | None = None
