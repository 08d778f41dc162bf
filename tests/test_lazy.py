"""rockseg.lazy: re-exports loaded on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_names_load_on_first_use_and_stay():
    code = """
import sys
import rockseg.inference as inference
assert "rockseg.inference.predicting" not in sys.modules and "torch" not in sys.modules
assert "predict" in dir(inference)
predict = inference.predict
assert "rockseg.inference.predicting" in sys.modules and inference.__dict__["predict"] is predict
try:
    inference.no_such_name
except AttributeError as exc:
    print(exc)
"""
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "module 'rockseg.inference' has no attribute 'no_such_name'"


@pytest.mark.parametrize("package", ["rockseg.io", "rockseg.training", "rockseg.inference"])
def test_every_listed_name_exists(package):
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
