#!/bin/bash
# The GPU session's kernel checks and benchmarks (2026-11-26, H200), run through the device
# tool as `OUT=/some/dir bash benchmarks/run_gpu.sh first|second|third`:
#   first:  correctness, the attention grid, the loss (which failed to launch with
#           block_d 256: shared memory), float32 attention;
#   second: correctness again, the loss with block_d 64 / 32 / 128, attention tilings;
#   third:  the float32 correctness cases that the first two runs' timeouts cut, and the
#           loss with the new block_d default.
# Each step has its own timeout so one slow step leaves the others' results.
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_gpu}; mkdir -p "$OUT"
QUIET='^(E1126|  %|This isn|If you|$)'   # XLA's slow-constant-folding chatter.
nvidia-smi -L
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
case "${1:-third}" in
first)
  timeout 150 python3 tools/check_kernels.py 2>&1 | tee "$OUT/check_kernels.txt"
  timeout 170 python3 tools/bench_kernels.py --what attention --dtypes bfloat16 \
    --seqs 577,1024,4096 --head-dims 64,128 --causal false --out "$OUT" --name attention_bf16
  timeout 60 python3 tools/bench_kernels.py --what attention --dtypes bfloat16 \
    --seqs 1024,4096 --head-dims 64 --causal true --out "$OUT" --name attention_bf16_causal
  timeout 130 python3 tools/bench_kernels.py --what loss --out "$OUT" --name loss_bf16
  timeout 50 python3 tools/bench_kernels.py --what attention --dtypes float32 \
    --seqs 1024,4096 --head-dims 64 --causal false --impls xla,pallas --out "$OUT" \
    --name attention_f32 ;;
second)
  timeout 100 python3 tools/check_kernels.py 2>&1 | grep -v -E "$QUIET" | tee "$OUT/check_kernels.txt"
  timeout 100 python3 tools/bench_kernels.py --what loss --loss-block-d 32,128 --out "$OUT" \
    --name loss_bf16
  timeout 180 python3 tools/bench_kernels.py --what attention --dtypes bfloat16 \
    --seqs 1024,4096 --head-dims 64,128 --causal false \
    --attn-blocks "128,64,64,64;64,64,64,64;128,128,64,128;128,128,128,64;128,128,128,128,8;128,128,32,64" \
    --out "$OUT" --name attention_bf16_tilings ;;
third)
  timeout 100 python3 tools/check_kernels.py --dtypes float32 2>&1 | grep -v -E "$QUIET" \
    | tee "$OUT/check_kernels_f32.txt"
  timeout 40 python3 tools/bench_kernels.py --what loss --loss-sizes 32768x1024 \
    --loss-kinds sigmoid --out "$OUT" --name loss_bf16_defaults ;;
esac
