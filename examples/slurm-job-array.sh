#!/bin/bash
# Segment one large volume with a Slurm job array and no cluster software: every task runs one part of the
# blocks into the same output store, and a last job (depending on the whole array) checks and stitches it.
#
#   export VOLUME=volume.zarr MODEL=model.pt OUT=pred.zarr
#   mkdir -p logs
#   jobid=$(sbatch --parsable examples/slurm-job-array.sh)           # submits the 16 parts
#   sbatch --dependency=afterok:$jobid --wrap "rockseg stitch $OUT -o final.ome.zarr"
#
# Paths and sizes come from the environment (sbatch passes it to the tasks): VOLUME, MODEL (a file or a shipped
# model's name), OUT, DEVICE (auto), BATCH_SIZE (8), PREDICT_OPTIONS (more options, e.g. "--block 64 --tta"),
# ROCKSEG (the command, default: rockseg on the PATH). The array's size, CPUs, GPUs, time and log files are the
# #SBATCH lines below; override them on the sbatch command line (sbatch --array=0-63 --gres=gpu:2 ...) or with
# sbatch's own variables (SBATCH_ARRAY_INX=0-63, SBATCH_GRES, SBATCH_TIMELIMIT...).
#
# A task that is killed (time limit, node failure) is simply resubmitted: finished blocks are skipped.
#SBATCH --job-name=rockseg-predict
#SBATCH --array=0-15
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --time=04:00:00
#SBATCH --output=logs/predict-%A_%a.log
set -euo pipefail
# shellcheck disable=SC2086  # PREDICT_OPTIONS holds several words
"${ROCKSEG:-rockseg}" predict "${VOLUME:-volume.zarr}" -m "${MODEL:-model.pt}" -o "${OUT:-pred.zarr}" \
    --part "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" --device "${DEVICE:-auto}" \
    --batch-size "${BATCH_SIZE:-8}" ${PREDICT_OPTIONS:-}
