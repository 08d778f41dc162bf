"""rockseg.devices: the allocator tuning the engine relies on (a Dask worker's engine tunes malloc; every block
gives its free heap pages back)."""

from __future__ import annotations

import os

import pytest


def test_tune_malloc_applies_on_glibc_and_yields_to_the_environment():
    import platform
    import subprocess
    import sys

    code = "from rockseg.devices import tune_malloc; print(tune_malloc())"
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    glibc = platform.libc_ver()[0] == "glibc"
    assert ran.stdout.strip() == str(glibc)
    for extra in ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, {"MALLOC_ARENA_MAX": "4"}):
        ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra},
                             check=True)
        assert ran.stdout.strip() == "False", extra
    # a worker rockseg started with its own settings in the environment still sets up trimming
    from rockseg.devices import MALLOC_TUNABLES

    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "GLIBC_TUNABLES": MALLOC_TUNABLES}, check=True)
    assert ran.stdout.strip() == str(glibc)


def test_release_free_memory_gives_free_heap_pages_back():
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc tuning is glibc-only")
    code = """
import os
import numpy as np
from rockseg import devices
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
assert devices.tune_malloc()
kept = [np.ones(5_000_000) for _ in range(8)]
del kept[:7]  # 280 MB of free heap below a live array: a tuned heap keeps it resident
before = rss()
devices.release_free_memory()
print(before - rss())
"""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stderr
    assert int(ran.stdout) > 200 * 2**20  # the free pages went back to the system
