"""rockseg's shared vocabulary: every choice and constant that more than one package uses, defined once.

The choices are ``str`` enums, so that Typer rejects a bad value before any work starts; the library takes their
``.value`` strings, and the tuples below (``PRECISIONS``, ``NORMS`` ...) are derived from the enums so that the two
can never drift apart. This module imports nothing from rockseg and nothing heavy (no torch, no zarr): every other
module may import it.

Words (see the README's glossary): a *tile* is one network input, its *halo* the context cut off each side; a
*block* is the unit of scheduling and writing; a *chunk* is the unit of storage and a Zarr *shard* a file of
chunks (``convert --shards``); a *part* is one task of a job array (``predict --part I/N``, formerly ``--shard``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

#: Labels are integers 0..MAX_LABEL (uint8 phases).
MAX_LABEL = 255
#: Label of voxels outside a ``predict --mask``.
OUTSIDE = 255
#: Names of the axes of a (Z, Y, X) volume, in order (per-slice scores, 2D models on 3D volumes).
AXES = ("z", "y", "x")
#: The model files shipped inside the package, and the one ``rockseg predict`` uses without ``--model``.
SHIPPED_MODELS = Path(__file__).parent / "data"
DEFAULT_MODEL = SHIPPED_MODELS / "pore-solid-3d.pt"

DEMO_EPOCHS = 12
"""Epochs of ``rockseg demo``'s training (100 steps each): about 1.5 minutes on a quiet 2-core CPU."""


class Compressor(str, Enum):
    """Codec of the chunks of a written store."""

    blosc_zstd = "blosc-zstd"
    zstd = "zstd"
    lz4 = "lz4"
    none = "none"


class ByteOrder(str, Enum):
    little = "little"
    big = "big"


class Axis(str, Enum):
    z = "z"
    y = "y"
    x = "x"


class Precision(str, Enum):
    """auto: bf16 on CUDA, float32 on a CPU (bf16 labels depend on the batch, and bf16 training diverged there)."""

    auto = "auto"
    float32 = "float32"
    bf16 = "bf16"


class Normalization(str, Enum):
    """Whose intensity statistics normalise a volume at prediction: the volume's own, or the training image's."""

    volume = "volume"
    model = "model"


class Norm(str, Enum):
    """Normalisation layers of a network."""

    batch = "batch"
    instance = "instance"
    none = "none"


class Act(str, Enum):
    relu = "relu"
    elu = "elu"


class Loss(str, Enum):
    """Terms of ``train --loss``; a loss is any "+"-sum of them, e.g. ce+dice."""

    ce = "ce"
    dice = "dice"
    focal = "focal"
    logiou = "logiou"
    cldice = "cldice"


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Schedule(str, Enum):
    """Learning-rate schedules of ``train --schedule``; poly (the default) decays step by step over the run."""

    poly = "poly"
    none = "none"
    plateau = "plateau"
    exp = "exp"
    cosine = "cosine"


class Sampling(str, Enum):
    """Training patches of ``train --sampling``: fresh ones from the tile set's training regions every step
    (random, the default), or its stored patches over and over (fixed)."""

    random = "random"
    fixed = "fixed"


class Augment(str, Enum):
    """Augmentation presets (rockseg.training.augment.PRESETS has one per member)."""

    none = "none"
    basic = "basic"
    strong = "strong"


class Connectivity(str, Enum):
    """Euler-number connectivity of a phase: 1 = 6-neighbourhood, 3 = 26-neighbourhood."""

    six = "1"
    twenty_six = "3"


#: Network architectures: the keys of rockseg.models.ARCHITECTURES (a test checks the two agree). Written out
#: here because importing torch would slow every command, even ``rockseg --version``, by seconds.
ARCH_NAMES = ("unet", "resunet", "uresnet", "linknet", "unetpp", "deeplabv3plus", "pspnet", "linear")
Arch = Enum("Arch", {name: name for name in ARCH_NAMES}, type=str)


def _values(choices: type[Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in choices)


COMPRESSORS = _values(Compressor)
BYTE_ORDERS = _values(ByteOrder)
PRECISIONS = _values(Precision)
NORMALIZATIONS = _values(Normalization)
NORMS = _values(Norm)
ACTIVATIONS = _values(Act)
LOSS_TERMS = _values(Loss)
OPTIMIZERS = _values(Optimizer)
SCHEDULES = _values(Schedule)
SAMPLINGS = _values(Sampling)
AUGMENTS = _values(Augment)
CONNECTIVITIES = tuple(int(member.value) for member in Connectivity)
