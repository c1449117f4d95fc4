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
# (default 690) is skipped and says so. Results (JSON lines, logs) go to RESULTS_DIR:
#   bash benchmarks/gpu_suite.sh RESULTS_DIR          run it (on a machine with CUDA)
#   bash benchmarks/gpu_suite.sh --dry-run RESULTS_DIR print the commands, run nothing
# CUB_DIR (default /tmp/protobench-cub) holds the generated JPEGs; PYTHON (default python3).
set -u
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: bash benchmarks/gpu_suite.sh [--dry-run] RESULTS_DIR (where the results are written)" >&2
  exit 2
fi
OUT=$1
PY=${PYTHON:-python3}
CUB=${CUB_DIR:-/tmp/protobench-cub}
BUDGET=${SUITE_SECONDS:-690}
cd "$(dirname "$0")/.."

run() {  # run LIMIT_SECONDS NAME COMMAND...: one step, its output in RESULTS_DIR/NAME.txt
  local limit=$1 name=$2; shift 2
  if [ $DRY = 1 ]; then echo "[$limit s] $*"; return 0; fi
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then echo "== $name: skipped, the suite's $BUDGET s are spent"; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit $limit s, $SECONDS s elapsed)"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  [ $rc = 0 ] || echo "   $name: exit $rc$([ $rc = 124 ] && echo ' (time limit)')"
  tail -2 "$OUT/$name.txt"
}

bench() {  # bench LIMIT LABEL ARGS...: attack_throughput.py, one JSON line appended to bench.jsonl
  local limit=$1 label=$2; shift 2
  run "$limit" "$label" $PY benchmarks/attack_throughput.py --device cuda --model resnet34 --batch-size 256 \
    --repeat 1 --label "$label" --oneline "$@"
  [ $DRY = 1 ] || grep -h '^{' "$OUT/$label.txt" >> "$OUT/bench.jsonl" \
    || echo "{\"label\": \"$label\", \"error\": \"no result (see $label.txt)\"}" >> "$OUT/bench.jsonl"
}

if [ $DRY = 0 ]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/log.txt") 2>&1
  export PYTHONUNBUFFERED=1
  $PY -m pip install -q --no-deps -e . > /dev/null 2>&1 || echo "(pip install -e . failed: using the installed protobench)"
  { nvidia-smi; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } \
    > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
fi

run 110 gpu_tests $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_sync.py
run 60 make_jpegs $PY -c "import sys; sys.path.insert(0, 'benchmarks'); from cub_jpeg import make_cub; make_cub('$CUB')"
bench 100 jpeg-bf16 --jpeg "$CUB" --precision bf16
bench 110 jpeg-fp32 --jpeg "$CUB" --precision fp32 --skip memory
bench 75 memory-bf16-efficiency --precision bf16 --images 1024 --reference-images 32
bench 30 memory-bf16-distance-float32 --precision bf16 --images 1024 --skip ideal,reference --distance float32
run 60 precision $PY benchmarks/precision_diff.py --device cuda
bench 120 compile-default --precision bf16 --images 1024 --skip reference --compile-mode default
bench 120 compile-reduce-overhead --precision bf16 --images 1024 --skip reference --compile-mode reduce-overhead
bench 240 compile-max-autotune --precision bf16 --images 1024 --skip reference --compile-mode max-autotune
[ $DRY = 1 ] || echo "== done in $SECONDS s: $OUT/bench.jsonl"
