"""MFU: model FLOPs (bigvl/model_flops.py) x rate / peak. Peak FLOP/s per device kind and
compute dtype; XLA's cost analysis of a compiled step (what ran: hardware FLOPs, HFU).

    mfu = model_flops_per_step * steps_per_sec / (peak_tflops(...) * 1e12 * devices)
"""

from __future__ import annotations

import jax
import numpy as np

# Dense (no 2:4 sparsity) peak TFLOP/s of one device (what jax.devices() lists), from the
# vendors' datasheets, per compute dtype:
#   "bfloat16": bf16 (and fp16) matmuls on the tensor cores / MXU;
#   "float32": float32 matmuls at JAX's default precision. On NVIDIA Ampere and later that is
#     TF32 on the tensor cores; on TPU, default precision runs an f32 matmul as one bf16 MXU
#     pass, so its peak is the bf16 one (Google publishes no other).
# Keys are matched against `device.device_kind` (case-insensitive, longest key first), e.g.
# "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB", "TPU v5 lite".
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.4, "float32": 494.7},       # H100 SXM5 (device kind "... HBM3").
    "H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "H100 NVL": {"bfloat16": 835.5, "float32": 417.5},
    "H200": {"bfloat16": 989.4, "float32": 494.7},       # Also GH200: the same Hopper die.
    "H800": {"bfloat16": 989.4, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},       # SXM4 and PCIe alike.
    "L4": {"bfloat16": 121.0, "float32": 60.0},
    "L40S": {"bfloat16": 362.0, "float32": 183.0},
    "B200": {"bfloat16": 2250.0, "float32": 1125.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},  # v5e.
    "TPU v5e": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v5": {"bfloat16": 459.0, "float32": 459.0},       # v5p reports "TPU v5" (or "TPU v5p").
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0, "float32": 918.0},  # v6e (Trillium).
    "TPU v6e": {"bfloat16": 918.0, "float32": 918.0},
}

# Compute dtypes -> the table's column.
DTYPE_COLUMN = {"bfloat16": "bfloat16", "float16": "bfloat16", "float32": "float32"}


def device_peak_tflops(device_kind: str, dtype="bfloat16") -> float | None:
  """The table's peak TFLOP/s for `device_kind` at compute `dtype` (a name or a numpy/jnp
  dtype: bfloat16, float16, float32), or None if the kind (e.g. "cpu") or dtype is unknown."""
  column = DTYPE_COLUMN.get(np.dtype(dtype).name if not isinstance(dtype, str) else dtype)
  if column is None:
    return None
  kind = device_kind.lower()
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100".
    if name.lower() in kind:
      return PEAK_TFLOPS[name].get(column)
  return None


def peak_tflops(configured: float = 0.0, device=None, dtype="bfloat16") -> float | None:
  """Peak TFLOP/s of one device: `configured` if > 0, else the table's entry for the device
  kind (default: the first device) and compute `dtype`, else None (e.g. CPU)."""
  if configured and configured > 0:
    return float(configured)
  return device_peak_tflops((device or jax.devices()[0]).device_kind, dtype)


def utilization(flops_per_step: float | None, steps_per_sec: float, peak: float | None,
                devices: int = 1) -> float | None:
  """flops_per_step x steps_per_sec / (peak TFLOP/s x 1e12 x devices); None without FLOPs or
  a peak. MFU: `flops_per_step` = model FLOPs of the global step over all `devices`; HFU:
  XLA's count of one device's program, `devices` = 1."""
  if not flops_per_step or not peak:
    return None
  return flops_per_step * steps_per_sec / (peak * 1e12 * devices)


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled (SPMD-partitioned, so per-device) computation, from XLA's
  cost analysis: what runs (remat recomputation included, custom calls such as Pallas kernels
  counted 0, a scan's body once), so hardware FLOPs, not model FLOPs."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Some backends have no cost model.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None
