"""The HPC examples on a real (single-node) Slurm cluster: ``examples/slurm-job-array.sh`` as a job array plus the
``afterok`` stitch job, and ``examples/dask-jobqueue-cluster.py`` (SLURMCluster workers running ``predict
--scheduler``), each giving labels equal to a local run. The ``slurm`` fixture (conftest.py) skips with the reason
where no cluster can be started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.helpers import DEFAULT_MODEL, run_rockseg

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PREDICT_OPTIONS = "--block 16 --tile 32 --workers 1"


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A small grey volume and its labels from a local run (the reference)."""
    from rockseg.synthetic import synthetic_rock

    root = tmp_path_factory.mktemp("scan")
    image, _ = synthetic_rock((32, 40, 40), seed=7)
    np.save(root / "img.npy", image)
    assert run_rockseg("convert", root / "img.npy", root / "img.zarr").returncode == 0
    proc = run_rockseg("predict", root / "img.zarr", "-m", DEFAULT_MODEL, "-o", root / "local.zarr", "--device",
                       "cpu", *PREDICT_OPTIONS.split())
    assert proc.returncode == 0, proc.stderr
    return root, zarr.open_array(str(root / "local.zarr"))[...]


def _job_env(tmp_path: Path) -> dict[str, str]:
    """What a user exports before sbatch: the example's paths and sizes, and the PATH of this environment."""
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "VOLUME": "", "MODEL": str(DEFAULT_MODEL),
            "DEVICE": "cpu", "BATCH_SIZE": "4", "PREDICT_OPTIONS": PREDICT_OPTIONS, "PYTHONWARNINGS": "ignore"}


def _state(record: str) -> tuple[str, str]:
    found = re.search(r"JobState=(\S+).*?ExitCode=(\S+)", record, re.S)
    return (found.group(1), found.group(2)) if found else ("?", "?")


@pytest.mark.slow
def test_job_array_then_afterok_stitch_equals_a_local_run(slurm, scan, tmp_path):
    root, local = scan
    (tmp_path / "logs").mkdir()
    env = {**_job_env(tmp_path), "VOLUME": str(root / "img.zarr"), "OUT": str(tmp_path / "pred.zarr")}
    # the example as its header says, with the sizes of a small machine on the command line
    array = slurm.sbatch("--array=0-3", "--cpus-per-task=1", "--gres=none", "--time=00:10:00",
                         str(EXAMPLES / "slurm-job-array.sh"), cwd=tmp_path, env=env)
    final = tmp_path / "final.ome.zarr"
    stitch = slurm.sbatch(f"--dependency=afterok:{array}", "--output=logs/stitch-%j.log", "--wrap",
                          f"rockseg stitch {tmp_path / 'pred.zarr'} -o {final} --json", cwd=tmp_path, env=env)
    record = slurm.wait(stitch)
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").iterdir()}
    assert _state(record) == ("COMPLETED", "0:0"), (record, logs)
    parts = [name for name in logs if name.startswith("predict-")]
    assert len(parts) == 4, logs
    assert all("wrote" in logs[name] for name in parts), logs
    summary = json.loads(logs[f"stitch-{stitch}.log"].strip().splitlines()[-1])
    assert summary["ok"] and summary["out"] == str(final)
    np.testing.assert_array_equal(zarr.open_array(str(final / "0"))[...], local)


@pytest.mark.slow
def test_dask_jobqueue_example_equals_a_local_run(slurm, scan, tmp_path):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (the test extra) is not installed")
    root, local = scan
    env = {**slurm.env, **_job_env(tmp_path), "JOBS": "2", "CORES": "1", "MEMORY": "1GB", "WALLTIME": "00:10:00",
           "GRES": "", "INTERFACE": "lo", "TILE": "32", "BLOCK": "16", "LOG_DIR": str(tmp_path / "logs"),
           "LOCAL_DIR": str(tmp_path / "scratch")}
    out = tmp_path / "pred.zarr"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "dask-jobqueue-cluster.py"), str(root / "img.zarr"),
                           str(DEFAULT_MODEL), str(out)], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["complete"] is True and summary["blocks_done"] == summary["blocks_total"]
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], local)
