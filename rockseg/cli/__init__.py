"""The ``rockseg`` command line: a thin skin over the library, one module per command.

Each command reads its options, calls one keyword-only library function and prints the result; the app, the
error handling and the entry point are in :mod:`rockseg.cli.common`. Importing this package registers every
command on the app.
"""

# Each import registers its command on the app; the order is the pipeline's, which --help lists.
from rockseg.cli import convert, tile, train, predict, verify, stitch, score, demo, models  # noqa: F401, I001
from rockseg.cli.common import app, main
from rockseg.vocabulary import Arch, Loss

__all__ = ["app", "main", "Arch", "Loss"]
