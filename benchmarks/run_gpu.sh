#!/bin/bash
# The GPU session's kernel checks and benchmarks, as run through the device tool:
#   OUT=/some/dir bash benchmarks/run_gpu.sh [first|second]
# "first" was the first run of 2026-11-26 (H200): correctness, the attention grid and the
# loss, which failed to launch with block_d 256 (shared memory). "second" (the default)
# reran the correctness check and the loss with block_d 64 and swept attention tilings.
# Each step has its own timeout so one slow step leaves the others' results.
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_gpu}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
if [ "${1:-second}" = first ]; then
  timeout 150 python3 tools/check_kernels.py 2>&1 | tee "$OUT/check_kernels.txt"
  timeout 170 python3 tools/bench_kernels.py --what attention --dtypes bfloat16 \
    --seqs 577,1024,4096 --head-dims 64,128 --causal false --out "$OUT" --name attention_bf16
  timeout 60 python3 tools/bench_kernels.py --what attention --dtypes bfloat16 \
    --seqs 1024,4096 --head-dims 64 --causal true --out "$OUT" --name attention_bf16_causal
  timeout 130 python3 tools/bench_kernels.py --what loss --out "$OUT" --name loss_bf16
  timeout 50 python3 tools/bench_kernels.py --what attention --dtypes float32 \
    --seqs 1024,4096 --head-dims 64 --causal false --impls xla,pallas --out "$OUT" --name attention_f32
  exit 0
fi
timeout 100 python3 tools/check_kernels.py 2>&1 | grep -v -E "^(E1126|  %|This isn|If you|$)" | tee "$OUT/check_kernels.txt"
timeout 100 python3 tools/bench_kernels.py --what loss --loss-block-d 32,128 --out "$OUT" --name loss_bf16
timeout 180 python3 tools/bench_kernels.py --what attention --dtypes bfloat16 --seqs 1024,4096 \
  --head-dims 64,128 --causal false \
  --attn-blocks "128,64,64,64;64,64,64,64;128,128,64,128;128,128,128,64;128,128,128,128,8;128,128,32,64" \
  --out "$OUT" --name attention_bf16_tilings
