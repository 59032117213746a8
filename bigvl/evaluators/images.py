"""Turning model-range images into the uint8 RGB pictures evaluators show in TensorBoard."""

from __future__ import annotations

import numpy as np


def to_rgb_uint8(img, vmin: float, vmax: float, scale: int = 1) -> np.ndarray:
  """(h, w, c) float in [vmin, vmax] (NaN: mid grey) -> (h*scale, w*scale, 3) uint8,
  each pixel repeated `scale` times; one channel becomes grey, extra channels are dropped."""
  x = (np.asarray(img, np.float64) - vmin) / (vmax - vmin)
  x = np.where(np.isnan(x), 0.5, np.clip(x, 0, 1))
  x = np.round(x * 255).astype(np.uint8)
  x = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]
  return x.repeat(scale, 0).repeat(scale, 1)
