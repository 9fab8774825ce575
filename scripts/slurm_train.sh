#!/usr/bin/env bash
#SBATCH --job-name=neuroml-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
#SBATCH --output=neuroml-train_%j.out
# Train a neuroml run data-parallel on several GPU nodes: one torchrun per node (srun starts
# them), one process per GPU, PyTorch DDP over NCCL with a c10d rendezvous on the first node.
#
# Usage (on the login node, in an environment where `neuroml` is installed):
#
#     sbatch [sbatch options...] scripts/slurm_train.sh DERIV RUN [extra `neuroml train` options...]
#     e.g. sbatch --nodes=4 --partition=gpu scripts/slurm_train.sh /scratch/deriv /scratch/run \
#              --model densenet121 --epochs 60 --batch-size 8
#
# The #SBATCH lines above are defaults: options given to sbatch override them (--nodes,
# --gpus-per-node, --time, ...). DERIV and RUN must be on a file system every node sees:
# rank 0 builds the tensor cache and writes the run folder, every rank reads the cache.
# The per-GPU batch is --batch-size; the effective batch is that times the number of GPUs.
#
# Environment variables (optional):
#     NEUROML_PORT     rendezvous port on the first node (default 29500)
#     NEUROML_GPUS     processes per node (default: SLURM_GPUS_ON_NODE, else 1)
#
# A killed job is continued by resubmitting the same command with --resume: finished folds are
# kept and the interrupted fold continues from its last epoch checkpoint.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '9,27p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
DERIV=$1
RUN=$2
shift 2
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    echo "error: submit this script with sbatch (SLURM_JOB_ID is not set)" >&2
    exit 2
fi
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${NEUROML_PORT:-29500}
GPUS=${NEUROML_GPUS:-${SLURM_GPUS_ON_NODE:-1}}
NNODES=${SLURM_NNODES:-1}
# each process uses its share of the node's cores (the neuroml command sets a short OpenMP spin)
export OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-$GPUS} / GPUS > 0 ? ${SLURM_CPUS_PER_TASK:-$GPUS} / GPUS : 1 ))
echo "neuroml train: $NNODES node(s) x $GPUS process(es), rendezvous $HEAD:$PORT, run folder $RUN"

# one srun task per node; torchrun starts the per-GPU processes and sets RANK, LOCAL_RANK,
# WORLD_SIZE, MASTER_ADDR/PORT, which neuroml.training.train_run reads.
srun --ntasks="$NNODES" --ntasks-per-node=1 \
    torchrun \
        --nnodes="$NNODES" \
        --nproc_per_node="$GPUS" \
        --rdzv_id="$SLURM_JOB_ID" \
        --rdzv_backend=c10d \
        --rdzv_endpoint="$HEAD:$PORT" \
        --no-python \
        neuroml train "$DERIV" --run-dir "$RUN" --device cuda "$@"
