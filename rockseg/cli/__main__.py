"""``python -m rockseg.cli`` (``torchrun -m rockseg.cli train ...``) runs the command line."""

from rockseg.cli.common import main

main()
