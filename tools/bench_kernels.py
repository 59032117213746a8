"""Benchmarks the Pallas kernels against their references; writes JSON and a Markdown table.

    # On an H100 (full grid, a few minutes):
    python tools/bench_kernels.py --out benchmarks/
    # Anywhere, in seconds (CPU: Pallas runs in interpret mode, so times mean nothing):
    python tools/bench_kernels.py --quick --out /tmp/bench

Attention: forward and forward+backward of impl "xla" (the jnp reference), "pallas" (flash
attention) and "cudnn" (`jax.nn.dot_product_attention(implementation="cudnn")`, GPU and
16-bit only) over a grid of batch x heads x sequence x head dim x dtype; TFLOP/s and the
ratios to XLA and to cuDNN measured in the same run. Loss: the SigLIP sigmoid and CLIP
softmax losses, fused (Pallas) vs dense (XLA), next to the bare logits matmul, with the
compiled programs' temp memory (`memory_analysis()`).

Each time is the median over --runs calls after --warmup calls, each ended by
`block_until_ready`. The "targets" section checks the performance goals of docs/kernels.md;
they apply only on a GPU and read "n/a" elsewhere.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigvl.kernels import attention as attention_lib  # noqa: E402
from bigvl.kernels import contrastive_loss as loss_lib  # noqa: E402
from bigvl.kernels import flash_attention as flash_lib  # noqa: E402

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}

# Performance goals (docs/kernels.md), checked on GPU only.
ATTN_TARGET_SEQS = (1024, 4096)
ATTN_TARGET_HEAD_DIM = 64
ATTN_MIN_SPEEDUP_VS_XLA = 2.0
ATTN_MIN_RATIO_VS_CUDNN = 0.8
LOSS_TARGET = (32768, 1024)
LOSS_MAX_SLOWDOWN_VS_MATMUL = 1.5


# Grid defaults: the full grid (for a GPU) and --quick's tiny one. A flag given explicitly
# wins over either.
FULL = dict(batch=[8], heads=[12], seqs=[196, 256, 577, 1024, 4096], head_dims=[64, 128],
            dtypes=["bfloat16", "float32"], causal=["false", "true"],
            loss_sizes=["4096x512", "16384x1024", "32768x1024"], loss_dtypes=["bfloat16"],
            runs=20, warmup=3)
QUICK = dict(batch=[1], heads=[2], seqs=[17, 64], head_dims=[16], dtypes=["float32"],
             causal=["false", "true"], loss_sizes=["96x32"], loss_dtypes=["float32"],
             runs=3, warmup=1)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  ints = lambda s: [int(x) for x in s.split(",") if x]
  strs = lambda s: [x for x in s.split(",") if x]
  p.add_argument("--out", default="benchmarks/", help="Directory for the JSON and Markdown.")
  p.add_argument("--name", default="bench_kernels", help="Basename of the output files.")
  p.add_argument("--quick", action="store_true",
                 help=f"Tiny grid, 1 warm-up, 3 runs (CPU-friendly): {QUICK}.")
  p.add_argument("--what", type=strs, default=["attention", "loss"],
                 help="Comma list: attention, loss.")
  p.add_argument("--batch", type=ints, help=f"Attention batch sizes ({FULL['batch']}).")
  p.add_argument("--heads", type=ints, help=f"Attention head counts ({FULL['heads']}).")
  p.add_argument("--seqs", type=ints, help=f"Sequence lengths, q_len = kv_len ({FULL['seqs']}).")
  p.add_argument("--head-dims", type=ints, help=f"Head dims ({FULL['head_dims']}).")
  p.add_argument("--dtypes", type=strs, help=f"Attention dtypes ({FULL['dtypes']}).")
  p.add_argument("--causal", type=strs, help="Comma list of false/true (both).")
  p.add_argument("--impls", type=strs, default=["xla", "pallas", "cudnn"],
                 help="Attention implementations.")
  p.add_argument("--attn-blocks", type=lambda s: [x for x in s.split(";") if x], default=[],
                 help="Extra Pallas tilings to time, ';'-separated 'q,k,q_bwd,k_bwd[,warps]' "
                      "(rows 'pallas:<spec>'); the plain 'pallas' rows use the defaults.")
  p.add_argument("--max-tokens", type=int, default=8 * 4096,
                 help="Skip attention configs with batch * seq above this (the XLA reference "
                      "holds batch*heads*seq^2 logits).")
  p.add_argument("--loss-sizes", type=strs,
                 help=f"Comma list of BATCHxDIM for the loss ({FULL['loss_sizes']}).")
  p.add_argument("--loss-dtypes", type=strs, help=f"Loss dtypes ({FULL['loss_dtypes']}).")
  p.add_argument("--loss-kinds", type=strs, default=["sigmoid", "softmax"])
  p.add_argument("--loss-block-d", type=ints, default=[],
                 help="Extra block_d values of the Pallas loss to time (rows 'pallas:d<N>').")
  p.add_argument("--runs", type=int, help="Timed calls per measurement (20; quick 3).")
  p.add_argument("--warmup", type=int, help="Untimed calls first (3; quick 1).")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  for key, value in (QUICK if args.quick else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.causal = [c.lower() in ("1", "true", "yes") for c in args.causal]
  return args


def time_fn(fn: Callable, args: tuple, runs: int, warmup: int) -> dict[str, float]:
  """Median / min wall time in ms of fn(*args) (already compiled) after warm-up."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return {"median_ms": statistics.median(times), "min_ms": min(times)}


def compile_fn(fn: Callable, args: tuple):
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  temp = int(getattr(mem, "temp_size_in_bytes", -1)) if mem is not None else -1
  return compiled, temp


# ------------------------------------------------------------------------------------------
# Attention.


def attention_flops(b, h, lq, lk, d, causal, mode):
  """Model FLOPs: 2 matmuls forward (4*b*h*lq*lk*d), 5 in the backward (x2.5)."""
  fwd = 4.0 * b * h * lq * lk * d * (0.5 if causal else 1.0)
  return fwd if mode == "fwd" else 3.5 * fwd


def bench_attention(args) -> list[dict]:
  rows = []
  rng = np.random.default_rng(args.seed)
  for dtype_name in args.dtypes:
    dtype = DTYPES[dtype_name]
    for b in args.batch:
      for h in args.heads:
        for seq in args.seqs:
          if b * seq > args.max_tokens:
            continue
          for d in args.head_dims:
            for causal in args.causal:
              shape = (b, seq, h, d)
              q, k, v, do = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
                             for _ in range(4))
              new = _bench_attention_config(args, q, k, v, do, causal, dtype_name)
              _progress(new)
              rows += new
  _fill_ratios(rows, ("dtype", "batch", "heads", "seq", "head_dim", "causal", "mode"))
  return rows


def _bench_attention_config(args, q, k, v, do, causal, dtype_name) -> list[dict]:
  b, seq, h, d = q.shape
  out = []
  ref = None
  variants = [(impl, impl, None) for impl in args.impls]
  if "pallas" in args.impls:
    variants += [(f"pallas:{spec}", "pallas", spec) for spec in args.attn_blocks]
  for label, impl, spec in variants:
    def fwd(q, k, v, impl=impl, spec=spec):
      if spec is None:
        return attention_lib.attention(q, k, v, causal=causal, impl=impl)
      nums = [int(x) for x in spec.split(",")]
      blocks = flash_lib.BlockSizes(*nums[:4])
      return flash_lib.flash_attention(q, k, v, causal=causal, block_sizes=blocks,
                                       num_warps=nums[4] if len(nums) > 4 else None)

    def fwd_bwd(q, k, v, do, fwd=fwd):
      o, vjp = jax.vjp(fwd, q, k, v)
      return o, vjp(do)

    for mode, fn, fargs in (("fwd", fwd, (q, k, v)), ("fwd+bwd", fwd_bwd, (q, k, v, do))):
      row = dict(op="attention", impl=label, mode=mode, dtype=dtype_name, batch=b, heads=h,
                 seq=seq, head_dim=d, causal=causal)
      try:
        compiled, temp = compile_fn(fn, fargs)
        row.update(time_fn(compiled, fargs, args.runs, args.warmup))
        row["temp_bytes"] = temp
        row["tflops"] = attention_flops(b, h, seq, seq, d, causal, mode) / (
            row["median_ms"] * 1e-3) / 1e12
        if mode == "fwd":
          o = compiled(*fargs)
          if impl == "xla":
            ref = o
          elif ref is not None:
            row["max_abs_err_vs_xla"] = float(jnp.max(jnp.abs(
                o.astype(jnp.float32) - ref.astype(jnp.float32))))
      except Exception as e:  # cuDNN on CPU / float32, out of memory, ...: record why.
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      out.append(row)
  return out


# ------------------------------------------------------------------------------------------
# Contrastive loss.


def bench_loss(args) -> list[dict]:
  rows = []
  rng = np.random.default_rng(args.seed + 1)
  for size in args.loss_sizes:
    n, d = (int(x) for x in size.lower().split("x"))
    for dtype_name in args.loss_dtypes:
      dtype = DTYPES[dtype_name]
      unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
      zimg = jnp.asarray(unit(rng.standard_normal((n, d), np.float32)), dtype)
      ztxt = jnp.asarray(unit(rng.standard_normal((n, d), np.float32)), dtype)
      t, bias = jnp.float32(10.0), jnp.float32(-10.0)
      for kind in args.loss_kinds:
        new = _bench_loss_config(args, kind, zimg, ztxt, t, bias, dtype_name)
        _progress(new)
        rows += new
  _fill_ratios(rows, ("kind", "batch", "dim", "dtype", "mode"))
  return rows


def _bench_loss_config(args, kind, zimg, ztxt, t, bias, dtype_name) -> list[dict]:
  n, d = zimg.shape

  def loss(impl, block_d=None):
    blocks = None if block_d is None else loss_lib.BlockSizes(block_d=block_d)
    if kind == "sigmoid":
      return lambda x, y, t, b: loss_lib.sigmoid_loss(x, y, t, b, impl=impl, block_sizes=blocks)
    return lambda x, y, t, b: loss_lib.softmax_loss(x, y, t, impl=impl, block_sizes=blocks)

  def matmul(x, y, t, b):
    # The floor any implementation pays: the logits matmul alone, reduced to a scalar so
    # the (n, n) result is not an output (XLA fuses the sum into nothing heavier).
    return jnp.sum(jnp.einsum("id,jd->ij", x, y, preferred_element_type=jnp.float32))

  out = []
  fargs = (zimg, ztxt, t, bias)
  ref = None
  variants = [("matmul", matmul), ("xla", loss("xla")), ("pallas", loss("pallas"))]
  variants += [(f"pallas:d{bd}", loss("pallas", bd)) for bd in args.loss_block_d]
  for impl, fn in variants:
    for mode in ("fwd", "fwd+bwd"):
      if impl == "matmul" and mode == "fwd+bwd":
        continue
      f = fn if mode == "fwd" else jax.value_and_grad(fn, argnums=(0, 1, 2, 3))
      row = dict(op="loss", kind=kind, impl=impl, mode=mode, dtype=dtype_name, batch=n, dim=d)
      try:
        compiled, temp = compile_fn(f, fargs)
        row["temp_bytes"] = temp
        row["bxb_f32_bytes"] = n * n * 4
        row.update(time_fn(compiled, fargs, args.runs, args.warmup))
        row["tflops"] = 2.0 * n * n * d * (1 if mode == "fwd" else 3) / (
            row["median_ms"] * 1e-3) / 1e12
        if mode == "fwd" and impl != "matmul":
          val = float(compiled(*fargs))
          row["value"] = val
          if impl == "xla":
            ref = val
          elif ref is not None:
            row["rel_err_vs_xla"] = abs(val - ref) / max(abs(ref), 1e-30)
      except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      out.append(row)
  return out


# ------------------------------------------------------------------------------------------
# Ratios, targets, output.


def _fill_ratios(rows, key_fields):
  """Adds speedup_vs_xla / speedup_vs_cudnn / slowdown_vs_matmul to rows of one config."""
  groups: dict[tuple, dict[str, dict]] = {}
  for r in rows:
    groups.setdefault(tuple(r.get(f) for f in key_fields), {})[r["impl"]] = r
  for r in rows:
    if "median_ms" not in r:
      continue
    group = groups[tuple(r.get(f) for f in key_fields)]
    for other, name in (("xla", "speedup_vs_xla"), ("cudnn", "speedup_vs_cudnn")):
      if other in group and "median_ms" in group[other]:
        r[name] = group[other]["median_ms"] / r["median_ms"]
    if r["op"] == "loss" and r["mode"] == "fwd":
      mm = group.get("matmul")
      if mm and "median_ms" in mm:
        r["slowdown_vs_matmul"] = r["median_ms"] / mm["median_ms"]


def check_targets(attn_rows, loss_rows, on_gpu: bool) -> list[dict]:
  """The goals of docs/kernels.md, each PASS / FAIL / n/a (not measured or not on a GPU)."""
  checks = []

  def add(name, ok, detail):
    status = "n/a" if ok is None else ("PASS" if ok else "FAIL")
    checks.append(dict(target=name, status=status, detail=detail))

  for seq in ATTN_TARGET_SEQS:
    sel = [r for r in attn_rows if r["impl"] == "pallas" and r["mode"] == "fwd+bwd"
           and r["seq"] == seq and r["head_dim"] == ATTN_TARGET_HEAD_DIM
           and r["dtype"] == "bfloat16" and not r["causal"] and "median_ms" in r]
    r = sel[0] if sel else None
    sx = r.get("speedup_vs_xla") if r else None
    add(f"flash fwd+bwd >= {ATTN_MIN_SPEEDUP_VS_XLA}x XLA (seq {seq}, d 64, bf16)",
        (sx >= ATTN_MIN_SPEEDUP_VS_XLA) if (on_gpu and sx is not None) else None,
        f"{sx:.2f}x" if sx is not None else "not measured")
    sc = r.get("speedup_vs_cudnn") if r else None
    add(f"flash fwd+bwd >= {ATTN_MIN_RATIO_VS_CUDNN}x cuDNN (seq {seq}, d 64, bf16)",
        (sc >= ATTN_MIN_RATIO_VS_CUDNN) if (on_gpu and sc is not None) else None,
        f"{sc:.2f}x" if sc is not None else "not measured")
  n, d = LOSS_TARGET
  sel = [r for r in loss_rows if r["impl"] == "pallas" and r["kind"] == "sigmoid"
         and r["batch"] == n and r["dim"] == d and "median_ms" in r]
  fwd = next((r for r in sel if r["mode"] == "fwd"), None)
  temps = [r["temp_bytes"] for r in sel if r.get("temp_bytes", -1) >= 0]
  # The smallest (n, n) buffer any dtype could use is n*n bytes.
  add(f"fused sigmoid loss {n}x{n} d {d}: no BxB buffer (fwd and fwd+bwd temp < {n}^2 B)",
      (max(temps) < n * n) if (on_gpu and temps) else None,
      f"max temp {max(temps) / 2**20:.1f} MiB" if temps else "not measured")
  slow = fwd.get("slowdown_vs_matmul") if fwd else None
  add(f"fused sigmoid loss {n}x{n} d {d}: fwd <= {LOSS_MAX_SLOWDOWN_VS_MATMUL}x logits matmul",
      (slow <= LOSS_MAX_SLOWDOWN_VS_MATMUL) if (on_gpu and slow is not None) else None,
      f"{slow:.2f}x" if slow is not None else "not measured")
  return checks


def _fmt(x, spec):
  return "" if x is None else format(x, spec)


def _progress(rows):
  skip = ("op", "min_ms", "temp_bytes", "bxb_f32_bytes", "median_ms", "tflops", "error")
  for r in rows:
    what = " ".join(f"{k}={v}" for k, v in r.items() if k not in skip)
    result = (f"{r['median_ms']:.3f} ms, {r['tflops']:.3g} TFLOP/s" if "median_ms" in r
              else r.get("error", ""))
    print(f"  {what}: {result}", flush=True)


def markdown(meta, attn_rows, loss_rows, checks) -> str:
  interp = ", Pallas in interpret mode (times are not kernel speed)" if meta["interpret"] else ""
  lines = [f"# Kernel benchmarks ({meta['device']})", "",
           f"{meta['date']}, jax {meta['jax']}, backend {meta['backend']}{interp}; "
           f"median of {meta['runs']} runs after {meta['warmup']} warm-up.", ""]
  if checks:
    lines += ["## Targets", "", "| target | status | measured |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['status']} | {c['detail']} |" for c in checks]
    lines.append("")
  if attn_rows:
    lines += ["## Attention", "",
              "| dtype | B | H | L | D | causal | mode | impl | ms | TFLOP/s | vs XLA | "
              "vs cuDNN | max err | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in attn_rows:
      lines.append(
          f"| {r['dtype']} | {r['batch']} | {r['heads']} | {r['seq']} | {r['head_dim']} | "
          f"{'yes' if r['causal'] else 'no'} | {r['mode']} | {r['impl']} | "
          f"{_fmt(r.get('median_ms'), '.3f')} | {_fmt(r.get('tflops'), '.3g')} | "
          f"{_fmt(r.get('speedup_vs_xla'), '.2f')} | {_fmt(r.get('speedup_vs_cudnn'), '.2f')} | "
          f"{_fmt(r.get('max_abs_err_vs_xla'), '.1e')} | {r.get('error', '')[:60]} |")
    lines.append("")
  if loss_rows:
    lines += ["## Contrastive loss", "",
              "| loss | B | d | dtype | mode | impl | ms | TFLOP/s | temp MiB | BxB f32 MiB | "
              "vs XLA | vs matmul | rel err | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in loss_rows:
      temp = r.get("temp_bytes")
      lines.append(
          f"| {r['kind']} | {r['batch']} | {r['dim']} | {r['dtype']} | {r['mode']} | "
          f"{r['impl']} | {_fmt(r.get('median_ms'), '.3f')} | {_fmt(r.get('tflops'), '.3g')} | "
          f"{_fmt(temp / 2**20 if temp is not None and temp >= 0 else None, '.2f')} | "
          f"{r['batch'] ** 2 * 4 / 2**20:.1f} | {_fmt(r.get('speedup_vs_xla'), '.2f')} | "
          f"{_fmt(r.get('slowdown_vs_matmul'), '.2f')} | {_fmt(r.get('rel_err_vs_xla'), '.1e')} | "
          f"{r.get('error', '')[:60]} |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  args = parse_args(argv)
  device = jax.devices()[0]
  on_gpu = device.platform == "gpu"
  meta = dict(device=getattr(device, "device_kind", device.platform), backend=jax.default_backend(),
              jax=jax.__version__, interpret=jax.default_backend() == "cpu",
              date=datetime.datetime.now().isoformat(timespec="seconds"),
              host=platform.node(), runs=args.runs, warmup=args.warmup, quick=args.quick,
              argv=list(sys.argv[1:] if argv is None else argv))
  print(f"bench_kernels on {meta['device']} (backend {meta['backend']})", flush=True)
  attn_rows = bench_attention(args) if "attention" in args.what else []
  loss_rows = bench_loss(args) if "loss" in args.what else []
  checks = check_targets(attn_rows, loss_rows, on_gpu)
  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, args.name + ".json")
  md_path = os.path.join(args.out, args.name + ".md")
  with open(json_path, "w") as f:
    json.dump(dict(meta=meta, attention=attn_rows, loss=loss_rows, targets=checks), f, indent=1)
  with open(md_path, "w") as f:
    f.write(markdown(meta, attn_rows, loss_rows, checks))
  print(f"wrote {json_path} and {md_path}")
  for c in checks:
    print(f"  {c['status']:4s} {c['target']}: {c['detail']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
