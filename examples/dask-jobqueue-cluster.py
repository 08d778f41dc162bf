"""Run `rockseg predict` on a Dask cluster of Slurm jobs (dask-jobqueue), e.g. one worker per GPU node.

    pip install dask-jobqueue
    python examples/dask-jobqueue-cluster.py volume.zarr model.pt pred.zarr

Each worker process loads the model once and runs whole blocks; the blocks are written straight into the
output store (which must be on a file system every node sees), with the same completion markers as a local run,
so a run that is cut short is resumed by running this again.
"""

import sys

from dask_jobqueue import SLURMCluster

from rockseg.inference import PredictConfig, predict

volume, model, out = sys.argv[1:4]
cluster = SLURMCluster(
    cores=8, processes=1, memory="32GB", walltime="04:00:00",
    job_extra_directives=["--gres=gpu:1"],  # one GPU per worker job
)
cluster.scale(jobs=4)
summary = predict(volume, out, model=model, config=PredictConfig(device="auto", batch_size=8,
                                                                  scheduler=cluster.scheduler_address))
print(summary)
cluster.close()
