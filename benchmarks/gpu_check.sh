#!/usr/bin/env bash
# The GPU checks as one short run, for a machine with a CUDA device: the ingest benchmark
# (benchmarks/ingest_gpu.py, arguments passed on), then the CUDA tests. Where mmsearch's own
# dependencies are not installed, wheels in .whl/ are unpacked to /tmp/site first. Logs and the
# results go to $OUT when it is set (a lent machine hands back that folder), else benchmarks/results.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-benchmarks/results}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 benchmarks/ingest_gpu.py "$@" 2>&1 | tee "$out/ingest-gpu.log"
if [ -n "${OUT:-}" ]; then cp benchmarks/results/gpu.json benchmarks/results/gpu.md "$OUT"/; fi
python3 -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider 2>&1 | tee "$out/cuda-tests.log"
