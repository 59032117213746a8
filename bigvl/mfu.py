"""Model FLOPs utilisation: FLOPs from XLA's cost analysis, peak FLOP/s per device kind."""

from __future__ import annotations

import jax

# Dense bf16 peak TFLOP/s per device, from the vendors' datasheets.
PEAK_TFLOPS = {
    "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "B200": 2250.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
    "TPU v5": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}


def peak_tflops(configured: float = 0.0, device=None) -> float | None:
  """`configured` if > 0, else the table's entry for the device kind, else None (e.g. CPU)."""
  if configured and configured > 0:
    return float(configured)
  kind = (device or jax.devices()[0]).device_kind
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):  # Longest match: "TPU v5 lite".
    if name.lower() in kind.lower():
      return PEAK_TFLOPS[name]
  return None


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled (SPMD-partitioned, so per-device) computation."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Some backends have no cost model.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None
