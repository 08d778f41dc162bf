#!/bin/bash
# Segment one large volume with a Slurm job array and no cluster software: every task runs one part of the
# blocks into the same output store, and a last job (depending on the whole array) checks and stitches it.
#
#   sbatch examples/slurm-job-array.sh            # submits the 16 parts
#   sbatch --dependency=afterok:<jobid> --wrap "rockseg stitch pred.zarr -o final.zarr"
#
# A task that is killed (time limit, node failure) is simply resubmitted: finished blocks are skipped.
#SBATCH --job-name=rockseg-predict
#SBATCH --array=0-15
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --time=04:00:00
#SBATCH --output=logs/predict-%A_%a.log
set -euo pipefail
rockseg predict volume.zarr -m model.pt -o pred.zarr \
    --part "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" --device auto --batch-size 8
