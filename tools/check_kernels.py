"""Checks the Pallas kernels against their references on the default backend.

    python tools/check_kernels.py            # on a GPU: compiled Triton kernels
    python tools/check_kernels.py --quick    # anywhere (CPU: interpret mode)

The test suite checks the kernels in interpret mode only (CI has no GPU); this script is
the same check for compiled kernels, forward and gradients, over shapes that include odd
lengths, causal masking and key padding. The reference runs at matmul precision
"highest", so float32 errors include the kernels' TF32 rounding on GPUs. Prints one line
a case and exits non-zero if any case is over its tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigvl.kernels import attention as attention_lib  # noqa: E402
from bigvl.kernels import contrastive_loss as loss_lib  # noqa: E402

# Relative to the reference's max |value|: bf16 as the interpret-mode tests; float32 on
# a GPU allows for TF32 dots inside the kernels.
TOLERANCE = {"bfloat16": 2e-2, "float32": 5e-3}


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_attention(b, lq, lk, h, d, dtype, causal, padded, rng) -> dict[str, float]:
  q = jnp.asarray(rng.standard_normal((b, lq, h, d)), dtype)
  k = jnp.asarray(rng.standard_normal((b, lk, h, d)), dtype)
  v = jnp.asarray(rng.standard_normal((b, lk, h, d)), dtype)
  do = jnp.asarray(rng.standard_normal((b, lq, h, d)), dtype)
  mask = None
  if padded:
    lengths = rng.integers(1, lk + 1, size=b)
    mask = jnp.asarray(np.arange(lk)[None, :] < lengths[:, None])

  # Arrays go in as arguments: closed-over ones become constants that XLA folds for
  # seconds at compile time.
  def run(q, k, v, do, mask, impl):
    f = lambda q, k, v: attention_lib.attention(q, k, v, mask=mask, causal=causal, impl=impl)
    o, vjp = jax.vjp(f, q, k, v)
    return (o, *vjp(do))

  run = jax.jit(run, static_argnames="impl")
  with jax.default_matmul_precision("highest"):
    ref = run(q, k, v, do, mask, impl="xla")
  got = run(q, k, v, do, mask, impl="pallas")
  return {name: rel_err(g, r) for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref)}


def check_loss(kind, n, d, dtype, rng) -> dict[str, float]:
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  x = jnp.asarray(unit(rng.standard_normal((n, d))), dtype)
  y = jnp.asarray(unit(rng.standard_normal((n, d))), dtype)
  t, bias = jnp.float32(10.0), jnp.float32(-10.0)

  def fn(impl):
    if kind == "sigmoid":
      return lambda x, y, t, b: loss_lib.sigmoid_loss(x, y, t, b, impl=impl)
    return lambda x, y, t, b: loss_lib.softmax_loss(x, y, t, impl=impl)

  vg = lambda impl: jax.jit(jax.value_and_grad(fn(impl), argnums=(0, 1, 2, 3)))(x, y, t, bias)
  with jax.default_matmul_precision("highest"):
    ref_val, ref_grads = vg("xla")
  val, grads = vg("pallas")
  out = {"loss": rel_err(val, ref_val)}
  for name, g, r in zip(("dx", "dy", "dt", "db"), grads, ref_grads):
    if kind == "softmax" and name == "db":
      continue
    out[name] = rel_err(g, r)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="Small shapes (CPU interpret mode).")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtypes", default="bfloat16,float32", help="Comma list of dtypes to check.")
  args = p.parse_args(argv)
  rng = np.random.default_rng(args.seed)
  dev = jax.devices()[0]
  print(f"check_kernels on {getattr(dev, 'device_kind', dev.platform)} "
        f"(backend {jax.default_backend()}, jax {jax.__version__})", flush=True)
  if args.quick:
    attn = [(1, 17, 17, 2, 16), (1, 33, 20, 1, 16)]
    losses = [(40, 16)]
  else:
    attn = [(2, 197, 197, 4, 64), (2, 577, 577, 2, 128), (1, 1000, 1000, 4, 64),
            (2, 129, 300, 2, 64), (1, 4096, 4096, 2, 64)]
    losses = [(1000, 256), (4100, 512)]
  failures = 0
  dtypes = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
  for dtype_name in args.dtypes.split(","):
    dtype = dtypes[dtype_name]
    tol = TOLERANCE[dtype_name]
    for b, lq, lk, h, d in attn:
      for causal in (False, True):
        for padded in (False, True):
          if causal and lq != lk:
            continue
          case = f"attention {dtype_name} b{b} q{lq} k{lk} h{h} d{d} causal={causal} padded={padded}"
          try:
            errs = check_attention(b, lq, lk, h, d, dtype, causal, padded, rng)
            bad = max(errs.values()) > tol
            failures += bad
            print(f"{'FAIL' if bad else 'ok  '} {case}: " +
                  " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)
          except Exception as e:  # A kernel that does not compile is a failure too.
            failures += 1
            print(f"ERR  {case}: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
    for n, d in losses:
      for kind in ("sigmoid", "softmax"):
        case = f"loss {kind} {dtype_name} n{n} d{d}"
        try:
          errs = check_loss(kind, n, d, dtype, rng)
          bad = max(errs.values()) > tol
          failures += bad
          print(f"{'FAIL' if bad else 'ok  '} {case}: " +
                " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)
        except Exception as e:
          failures += 1
          print(f"ERR  {case}: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
  print(f"{failures} case(s) over tolerance" if failures else "all cases within tolerance")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
