#!/usr/bin/env bash
# Everything protobench checks on a GPU, in one run, most important first: the GPU tests,
# attack throughput (ResNet34 ProtoPNet at 224 px, 2000 prototypes, 200 classes, random
# weights; CUB-sized run of 5,794 images x 40 steps), the demo on the GPU, bf16/fp16 against
# fp32 (true fp32: no TF32), and the float64 prototype distance against the float32 formula.
# Results go to $OUT (default ./gpu-results): gpu_tests.txt, bench.jsonl, precision.json,
# distance_cost.json, env.txt, log.txt.
#   OUT=/tmp/gpu bash benchmarks/gpu_suite.sh
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
PY=${PYTHON:-python3}

$PY -m pip install -q --no-deps --no-build-isolation -e . || $PY -m pip install -q --no-deps -e .
{ nvidia-smi; $PY -c "import torch, protobench; print('torch', torch.__version__, torch.cuda.get_device_name())"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {  # step SECONDS LABEL ARGS...: one throughput measurement appended to bench.jsonl
  local limit=$1 label=$2; shift 2
  echo "== $label"
  timeout "$limit" $PY benchmarks/attack_throughput.py --device cuda --label "$label" --oneline "$@" >> "$OUT/bench.jsonl" \
    || echo "{\"label\": \"$label\", \"error\": \"exit $? (timeout $limit s?)\"}" >> "$OUT/bench.jsonl"
}

echo "== gpu tests"
timeout 150 $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
tail -3 "$OUT/gpu_tests.txt"
R34="--model resnet34 --batch-size 256 --repeat 1"
step 60 demo-fp32 --model demo --batch-size 256 --repeat 1 --images 1024 --reference-images 64
echo "== precision"
timeout 90 $PY benchmarks/precision_diff.py --device cuda > "$OUT/precision.json"
echo "== float64 distance"
timeout 120 $PY benchmarks/distance_cost.py --device cuda > "$OUT/distance_cost.json"
step 100 r34-bf16-1024 $R34 --precision bf16 --images 1024 --reference-images 32
step 100 r34-bf16-cub $R34 --precision bf16 --images 5794 --skip ideal,reference
step 100 r34-tf32-cub $R34 --precision tf32 --images 5794 --skip ideal,reference
step 120 r34-fp32-1024 $R34 --precision fp32 --images 1024 --reference-images 32
step 170 r34-fp32-cub $R34 --precision fp32 --images 5794 --skip ideal,reference
echo "== done"
