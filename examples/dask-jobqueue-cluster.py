"""Run `rockseg predict` on a Dask cluster of Slurm jobs (dask-jobqueue), e.g. one worker per GPU node.

    pip install dask-jobqueue
    python examples/dask-jobqueue-cluster.py volume.zarr model.pt pred.zarr

Each worker process loads the model once and runs whole blocks; the blocks are written straight into the
output store (which must be on a file system every node sees), with the same completion markers as a local run,
so a run that is cut short is resumed by running this again.

Sizes come from the environment: JOBS (worker jobs, 4), CORES (8), MEMORY ("32GB"), WALLTIME ("04:00:00"),
GRES ("gpu:1"; empty for none), DEVICE ("auto"), BATCH_SIZE (8), TILE and BLOCK (the tile and block edges, default
the model's tile and a block near 128),
INTERFACE (the network interface workers listen on, e.g. "ib0"; default Dask's choice), and LOG_DIR and
LOCAL_DIR (the workers' log and scratch folders). The summary is printed as one JSON line.
"""

import json
import os
import sys

from dask_jobqueue import SLURMCluster

from rockseg.inference import PredictConfig, predict

volume, model, out = sys.argv[1:4]
env = os.environ.get
gres = env("GRES", "gpu:1")
cluster = SLURMCluster(
    cores=int(env("CORES", "8")), processes=1, memory=env("MEMORY", "32GB"), walltime=env("WALLTIME", "04:00:00"),
    job_extra_directives=[f"--gres={gres}"] if gres else [],  # one GPU per worker job by default
    interface=env("INTERFACE") or None, log_directory=env("LOG_DIR") or None,
    local_directory=env("LOCAL_DIR") or None,
)
try:
    cluster.scale(jobs=int(env("JOBS", "4")))
    tile, block = (int(env(name)) if env(name) else None for name in ("TILE", "BLOCK"))
    summary = predict(volume, out, model=model, config=PredictConfig(
        device=env("DEVICE", "auto"), batch_size=int(env("BATCH_SIZE", "8")), tile=tile, block=block,
        scheduler=cluster.scheduler_address))
    print(json.dumps(summary, default=str))
finally:
    cluster.close()
