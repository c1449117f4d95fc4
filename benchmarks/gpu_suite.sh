#!/usr/bin/env bash
# Everything protobench measures on a GPU, in one run of about 12 minutes, most important first:
#   1. the GPU tests, the host-synchronisation audit among them (tests/test_gpu.py, tests/test_sync.py);
#   2. a CUB-sized run from JPEG files on disk (5,794 synthetic JPEGs of CUB sizes in the CUB_200_2011
#      layout, written first), ResNet34 ProtoPNet at 224 px, 40 pgd steps: bf16, and true fp32 (no TF32),
#      with the decoding measured apart (DataLoader workers + pinned memory, and nvJPEG);
#   3. efficiency against the bare forward + input-gradient loop, and the speed-up over the
#      reference's one-image structure (bf16, 1024 images in memory);
#   4. the float64 prototype distance's cost: the same run with the original float32 formula;
#      and how far tf32 / bf16 / fp16 move the demo's numbers from fp32 (benchmarks/precision_diff.py);
#   5. torch.compile: default, reduce-overhead (CUDA graphs), max-autotune; each with its own
#      bare-loop efficiency. max-autotune comes last: it gets whatever time is left.
# Each step has a time limit, and a step that would not fit in what is left of SUITE_SECONDS
# (default 690) is skipped and says so. Results go to RESULTS_DIR: bench.jsonl (one JSON line per
# attack_throughput step), NAME.txt (each step's output), steps.tsv (each step's exit code and
# seconds), env.txt and log.txt.
#   bash benchmarks/gpu_suite.sh RESULTS_DIR            run it (on a machine with CUDA)
#   bash benchmarks/gpu_suite.sh --dry-run RESULTS_DIR  every step on the CPU at the smallest sizes (each
#                                                       script's --smoke): checks that every step starts
#                                                       and writes its results; the figures mean nothing
#   bash benchmarks/gpu_suite.sh --print                print the steps and their commands, run nothing
# CUB_DIR (default /tmp/protobench-cub; with --dry-run /tmp/protobench-cub-smoke) holds the generated
# JPEGs; PYTHON (default python3).
set -u
MODE=run
case "${1:-}" in
  --dry-run) MODE=dry; shift ;;
  --print) MODE=print; shift ;;
esac
if [ $MODE != print ] && [ $# -ne 1 ]; then
  echo "usage: bash benchmarks/gpu_suite.sh [--dry-run] RESULTS_DIR (where the results are written), or --print" >&2
  exit 2
fi
OUT=${1:-}
PY=${PYTHON:-python3}
BUDGET=${SUITE_SECONDS:-690}
DEVICE=cuda
SMOKE=()
CUB=${CUB_DIR:-/tmp/protobench-cub}
if [ $MODE = dry ]; then
  DEVICE=cpu
  SMOKE=(--smoke)
  CUB=${CUB_DIR:-/tmp/protobench-cub-smoke}  # never the real run's files: --smoke writes 4
fi
cd "$(dirname "$0")/.."

run() {  # run LIMIT_SECONDS NAME COMMAND...: one step, its output in RESULTS_DIR/NAME.txt
  local limit=$1 name=$2; shift 2
  if [ $MODE = print ]; then echo "$name [$limit s] $*"; return 0; fi
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped, the suite's $BUDGET s are spent"
    printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
    return 0
  fi
  [ $MODE = dry ] && [ "$limit" -lt 300 ] && limit=300  # a shared CPU: tiny sizes, but slow process starts
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit $limit s, $SECONDS s elapsed)"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$OUT/steps.tsv"
  [ $rc = 0 ] || echo "   $name: exit $rc$([ $rc = 124 ] && echo ' (time limit)')"
  tail -2 "$OUT/$name.txt"
}

bench() {  # bench LIMIT LABEL ARGS...: attack_throughput.py, one JSON line appended to bench.jsonl
  local limit=$1 label=$2; shift 2
  run "$limit" "$label" $PY benchmarks/attack_throughput.py --device $DEVICE --model resnet34 --batch-size 256 \
    --repeat 1 --label "$label" --oneline "$@" ${SMOKE[@]+"${SMOKE[@]}"}
  [ $MODE = print ] || grep -h '^{' "$OUT/$label.txt" >> "$OUT/bench.jsonl" \
    || echo "{\"label\": \"$label\", \"error\": \"no result (see $label.txt)\"}" >> "$OUT/bench.jsonl"
}

if [ $MODE != print ]; then
  mkdir -p "$OUT"
  : > "$OUT/steps.tsv"
  exec > >(tee -a "$OUT/log.txt") 2>&1
  export PYTHONUNBUFFERED=1
  if [ $MODE = run ]; then
    $PY -m pip install -q --no-deps -e . > /dev/null 2>&1 || echo "(pip install -e . failed: using the installed protobench)"
  fi
  { date -u; uptime; lscpu 2>/dev/null | grep -E 'Model name|^CPU\(s\)'; command -v nvidia-smi > /dev/null && nvidia-smi
    $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
    git log -1 --format='commit %H %cd' 2>/dev/null; } > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
fi

run 110 gpu_tests $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_sync.py
run 60 make_jpegs $PY benchmarks/cub_jpeg.py "$CUB" --write-only ${SMOKE[@]+"${SMOKE[@]}"}
bench 100 jpeg-bf16 --jpeg "$CUB" --precision bf16
bench 110 jpeg-fp32 --jpeg "$CUB" --precision fp32 --skip memory
bench 75 memory-bf16-efficiency --precision bf16 --images 1024 --reference-images 32
bench 30 memory-bf16-distance-float32 --precision bf16 --images 1024 --skip ideal,reference --distance float32
run 60 precision $PY benchmarks/precision_diff.py --device $DEVICE ${SMOKE[@]+"${SMOKE[@]}"}
bench 120 compile-default --precision bf16 --images 1024 --skip reference --compile-mode default
bench 120 compile-reduce-overhead --precision bf16 --images 1024 --skip reference --compile-mode reduce-overhead
bench 240 compile-max-autotune --precision bf16 --images 1024 --skip reference --compile-mode max-autotune
[ $MODE = print ] || echo "== done in $SECONDS s: $OUT/bench.jsonl"
