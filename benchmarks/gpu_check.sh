#!/usr/bin/env bash
# All GPU checks in one command, for a lent GPU machine or your own:
#
#   bash benchmarks/gpu_check.sh           # full overhead timings
#   bash benchmarks/gpu_check.sh --quick   # L = 2048 only, fewer repeats
#
# 1. benchmarks/gpu_check.py: exactness of the probe's masses on every CUDA SDPA backend
#    (flash, memory-efficient, cuDNN, math) in fp32 / bf16 / fp16 against float64, the
#    outputs-unchanged invariant, and the probe's time and memory overhead ratios.
# 2. benchmarks/hf_gpu_check.py: HuggingFace models (sdpa, eager) on the GPU: outputs
#    unchanged, masses against eager attention weights.
# 3. benchmarks/rollingq_gpu_check.py: RollingQ's query edit on every backend, training with
#    rotation on the GPU, checkpoint reload on the CPU, resume, anchor pass.
# 4. The reliability tests that run on any device (checkpointing, compile, autocast), on CPU.
#
# Exit status: non-zero when any part fails. Without CUDA, parts 1-3 say so and pass.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
status=0
run() {
    echo
    echo "=== $*"
    "$@" || { echo "=== FAILED: $*"; status=1; }
}
run "$PYTHON" benchmarks/gpu_check.py ${1+"$@"}
run "$PYTHON" benchmarks/hf_gpu_check.py
run "$PYTHON" benchmarks/rollingq_gpu_check.py
if "$PYTHON" -c "import pytest, hypothesis" 2>/dev/null; then
    run "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_reliability.py
fi
echo
if [ "$status" -eq 0 ]; then echo "all GPU checks passed"; else echo "some GPU checks FAILED"; fi
exit "$status"
