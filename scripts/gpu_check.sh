#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA card (a cluster node, a lent GPU box):
# the CUDA tests (bf16 autocast, channels-last, the GPU preload, torch.compile, torchrun/NCCL),
# then the GPU throughput benchmark. Logs and the benchmark's JSON go to OUT_DIR.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default ./gpu-check; ~6-9 min on an H100/H200
set -u
out=${1:-gpu-check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/card.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" | tee -a "$out/card.txt"
status=0
timeout "${BENCH_TIMEOUT:-600}" "$py" scripts/bench_gpu.py --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout "${TEST_TIMEOUT:-300}" "$py" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
