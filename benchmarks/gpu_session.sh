#!/usr/bin/env bash
# The GPU runbook (benchmarks/README.md) as named steps, so that a device call is one short command:
#
#     bash benchmarks/gpu_session.sh smoke short probe        # one call: about 8 minutes on an H100
#     bash benchmarks/gpu_session.sh --dry-run smoke pil      # print the commands only
#
# Steps and the wall time each is allowed (a device call may run 600 s in all; pick steps whose
# limits add up to less, the machine's start is not counted):
#   smoke            120 s  tests/gpu: every CUDA path on tiny data. Stops the session if it fails.
#   probe            150 s  paper ResNet-18, 4 epochs eager and compiled: should `paper` compile?
#   short            270 s  screen and fast on clean and class-wise noise (targets: >= 90 % clean)
#   paper-clean      400 s  paper, 60 epochs, clean (target <= 2.5 s/epoch)
#   paper-classwise  400 s  paper, 60 epochs, class-wise noise
#   pil              420 s  PIL generation on 50,000 images + a paper victim on it (target <= 15 %)
#   defenses         540 s  the defense table under paper; carry .data/defenses.db from the last call
#                           (fetched as defenses.db) and it resumes where that call stopped
#   grid-screen      420 s  grids/synthetic-screen.yaml: seven methods x three defenses with screen;
#                           resumes from .data/grids.db like `defenses`
#   em               580 s  EM sample-wise on 50,000 images, ResNet-18, the paper's loop and with
#                           recalibrate_bn=true: rounds to the stop test and seconds (target <= 150 s)
#
# Needs .data/cifar10-jpeg.tar.gz (and .whl/ with the kornia wheels for UEraser) carried into the
# call. Everything a step prints is appended to $OUT/R.md by the scripts; this script's own log is
# $OUT/session.log. Append $OUT/R.md to benchmarks/RESULTS.md as it is.
set -u
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT" .data
DATA=.data/cifar10-jpeg.tar.gz
R="$OUT/R.md"
PY=python3

step() {  # step LIMIT_SECONDS COMMAND...: run with a time limit, log it, never abort the session
  local limit=$1; shift
  echo "### $(date -u +%H:%M:%S) (limit ${limit}s): $*" | tee -a "$OUT/session.log"
  if [ "$DRY" = 1 ]; then return 0; fi
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tail -40 | tee -a "$OUT/session.log"
  local rc=${PIPESTATUS[0]}
  echo "### rc=$rc" | tee -a "$OUT/session.log"
  return "$rc"
}

if [ "$DRY" = 0 ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  fi
  export PYTHONPATH="$PWD/src:/tmp/site"
  [ -f "$DATA" ] || { echo "error: $DATA not carried" | tee -a "$OUT/session.log"; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/session.log" 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >>"$OUT/session.log" 2>&1
fi

for name in "$@"; do
  case "$name" in
    smoke)
      [ "$DRY" = 1 ] || $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "error: no CUDA device visible: tests/gpu would only skip" | tee -a "$OUT/session.log"; exit 1; }
      step 120 $PY -m pytest tests/gpu -q -x -p no:cacheprovider || { echo "tests/gpu failed: fix before benchmarking"; exit 1; } ;;
    probe)
      step 150 $PY benchmarks/bench_train.py "$DATA" --recipes paper:epochs=4,paper:epochs=4,compile=true --data clean --out "$R" ;;
    short)
      step 270 $PY benchmarks/bench_train.py "$DATA" --recipes screen,fast --data clean,classwise --out "$R" ;;
    paper-clean)
      step 400 $PY benchmarks/bench_train.py "$DATA" --recipes paper --data clean --out "$R" ;;
    paper-classwise)
      step 400 $PY benchmarks/bench_train.py "$DATA" --recipes paper --data classwise --out "$R" ;;
    pil)
      step 420 $PY benchmarks/bench_pil.py --data "$DATA" --victim paper --victim-seeds 0 --record --results "$R" ;;
    defenses)
      step 540 $PY benchmarks/bench_defenses.py --data "$DATA" --recipe paper --db .data/defenses.db \
        --record --results "$R"
      [ -f .data/defenses.db ] && cp .data/defenses.db "$OUT/defenses.db" ;;
    grid-screen)
      step 420 $PY benchmarks/bench_grid.py benchmarks/grids/synthetic-screen.yaml --data "$DATA" --db .data/grids.db \
        --record --results "$R"
      [ -f .data/grids.db ] && cp .data/grids.db "$OUT/grids.db" ;;
    em)
      step 360 $PY benchmarks/bench_baselines.py --data "$DATA" --methods em --victim none --record --results "$R"
      step 220 $PY benchmarks/bench_baselines.py --data "$DATA" --methods em --set em.recalibrate_bn=true \
        --victim none --record --results "$R" ;;
    *)
      echo "error: unknown step '$name' (smoke, probe, short, paper-clean, paper-classwise, pil, defenses," \
        "grid-screen, em)"; exit 2 ;;
  esac
done
