"""rockseg: segment huge X-ray micro-CT volumes of rocks with UNet-family networks, and score them.

The command line (``rockseg --help``) is a thin skin over this library; every command has a keyword-only
function here that can be called from Python.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:
    # Import torch only when a model is asked for, so that `rockseg --version` and the I/O commands stay fast.
    if name == "load_model":
        from rockseg.models import load_model

        return load_model
    raise AttributeError(f"module 'rockseg' has no attribute {name!r}")
