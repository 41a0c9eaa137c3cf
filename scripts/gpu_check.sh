#!/bin/bash
# The checks that need a CUDA GPU: `make bench` section 4 (plain GPU loop vs the engine in fp32, fp16 and
# bf16, tiny and full-size model) and the tests that compare GPU jobs with CPU jobs on the real samples.
# Usage: scripts/gpu_check.sh [python]   (default: the backend venv's; any python with the backend's packages)
set -u
cd "$(dirname "$0")/.."
PY=${1:-.venv/backend/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" GDAL_PAM_ENABLED=NO PYTHONUNBUFFERED=1
export SKYSENSE_DATA=${SKYSENSE_DATA:-$(bash scripts/find_data.sh)}
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch: nothing to check')" || exit 2
status=0
"$PY" -m benchmarks.run_all --skip speed,compile,precision,onnx,memory,int8,reliability || status=1
"$PY" -m pytest -q -p no:cacheprovider tests/backend/engine/test_engine_cuda.py tests/backend/engine/test_engine_core.py \
    tests/backend/change/test_change_pipeline.py || status=1
exit $status
