#!/usr/bin/env bash
# Issue 15's GPU measurements in one go (about 7 minutes on an H100/H200), each step side by side in one process:
#   1. bf16 weights: transformers' own attention/norms vs engine/compute/kernels.py (step times, share of peak,
#      the SDPA kernel each attention call runs), then our single-job step vs PEFT's, and evaluation;
#   2. the single-job step compiled with CUDA graphs ("reduce-overhead") vs eager, compile time included;
#   3. fp32 weights under bf16 autocast (the paper presets' precision): the same comparison;
#   4. the goals' rows: the 32-job grid one by one and grouped, the 256-row step, ours vs PEFT.
#
#   bash bench/gpu_kernels.sh              # JSON reports to $OUT (default bench/results)
#   MODE=tiny bash bench/gpu_kernels.sh    # the same script on a CPU with a tiny model, to check it runs
# Wheels in .whl/ (a newer transformers, say) are installed first when present.
set -uo pipefail
OUT=${OUT:-bench/results}
MODE=${MODE:-gpu}
PY=${PYTHON:-python3}
if [ -d .whl ] && [ "$MODE" = gpu ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# the A/B at 16 jobs (128 rows): transformers' own modules need more memory than 32 jobs leave on an 80 GB H100
timeout 200 $PY bench/speed.py --mode "$MODE" --jobs 16 --only kernels,pt_step,eval --json "$OUT/kernels-$MODE-bf16.json"
timeout 150 $PY bench/speed.py --mode "$MODE" --only compile --json "$OUT/kernels-$MODE-compile.json"
timeout 120 $PY bench/speed.py --mode "$MODE" --jobs 16 --precision autocast --only kernels,pt_step \
  --json "$OUT/kernels-$MODE-autocast.json"
# the goals: 32 jobs (256 rows), with engine/compute/kernels.py, and PEFT's step
timeout 120 $PY bench/speed.py --mode "$MODE" --only pt_step,grid --json "$OUT/grid-$MODE-bf16.json"
timeout 120 $PY bench/speed.py --mode "$MODE" --precision autocast --only pt_step,grid --json "$OUT/grid-$MODE-autocast.json"
