#!/usr/bin/env bash
# The GPU check: benchmarks + the gpu test tier on one CUDA machine, JSON results in one folder.
#
#   bash scripts/gpu_check.sh OUT_DIR [PHASE ...]
#
# Phases (default: all, in this order; most wanted first): train (radphi2 stage 1: eager-vs-compiled loss parity,
# bare loop, Ray Train 1 GPU worker), train2 (radphi2 stage 2, bare, and a larger batch),
# tokenize (chexmix VQ tokenization at 512 px, path vs bare, fp32 vs bf16 + compile), tests
# (pytest -m gpu), evaluate (one radphi2 checkpoint's four evaluation tasks, MIMIC-CXR
# projection).
# Each phase has its own time limit and a failing phase does not stop the others; the exit code
# is the number of failed phases. Results: OUT_DIR/*.json, OUT_DIR/<phase>.log,
# OUT_DIR/gpu-tests.xml, OUT_DIR/summary.txt.
#
# GPU_CHECK_DRY_RUN=1 runs the same phases on the CPU with the debug presets and a few steps
# (a check of the script itself, minutes on 2 cores; its numbers mean nothing).
#
# On a machine without the project's packages (no package index), run scripts/gpu_wheels.sh
# where pip works and bring .whl/ along: it is installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_check.sh OUT_DIR [PHASE ...]}
shift
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(train tokenize tests train2 evaluate)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=true RAY_USAGE_STATS_ENABLED=0 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2
export RAY_AUTH_MODE=disabled  # the one-node Ray this script starts is bound to 127.0.0.1
# one compile cache for every phase: later processes reuse the kernels of earlier ones
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/chexmix-inductor}
PY=${PYTHON:-python3}
if [ "${GPU_CHECK_DRY_RUN:-0}" != 1 ] && [ -d .whl ]; then
  if [ ! -f /tmp/site/.chexmix-installed ]; then
    bash scripts/gpu_install.sh .whl /tmp/site > /dev/null && touch /tmp/site/.chexmix-installed
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1

DEV=cuda LM=radphi2 VQ=chexmix BATCH=16 PBATCH=8 XBATCH=24 WARM=5 STEPS=20 LOGE=5
TOKARGS=(--max-seconds 110) EVALARGS=(--max-seconds 80)
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
  DEV=cpu LM=debug VQ=debug BATCH=4 PBATCH=4 XBATCH=8 WARM=2 STEPS=2 LOGE=2
  TOKARGS=(--images 16 --repeats 1) EVALARGS=(--images 8)
fi
failed=0
phase() {  # phase NAME LIMIT_S CMD...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log"
  [ $rc -eq 0 ] || failed=$((failed + 1))
}

for p in "${PHASES[@]}"; do
  case $p in
    train)
      phase train 300 $PY bench/train.py --preset $LM --device $DEV --stage 1 --compile \
        --batch-size $BATCH --warmup $WARM --steps $STEPS --log-every $LOGE --repeats 1 \
        --ddp-workers 0 --parity-steps 20 --parity-batch-size $PBATCH --no-ray-checkpoint \
        --rows 256 --out "$OUT" ;;
    train2)
      phase train2 150 $PY bench/train.py --preset $LM --device $DEV --stage 2 --compile \
        --batch-size $BATCH --warmup $WARM --steps $STEPS --log-every $LOGE --repeats 1 \
        --skip-ray --extra-batch-sizes $XBATCH --rows 256 --out "$OUT" ;;
    tokenize)
      phase tokenize 150 $PY bench/tokenize.py --preset $VQ --device $DEV "${TOKARGS[@]}" \
        --out "$OUT" ;;
    evaluate)
      phase evaluate 120 $PY bench/evaluate.py --preset $LM --device $DEV "${EVALARGS[@]}" \
        --out "$OUT" ;;
    tests)
      phase tests 180 $PY -m pytest -m gpu -p no:cacheprovider -q --timeout=200 \
        --junitxml="$OUT/gpu-tests.xml" tests/test_gpu_training.py tests/test_gpu_tokenize.py ;;
    *) echo "unknown phase $p" >&2; failed=$((failed + 1)) ;;
  esac
done
echo "failed phases: $failed, total ${SECONDS}s" | tee -a "$OUT/summary.txt"
exit "$failed"
