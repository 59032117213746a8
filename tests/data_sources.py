"""Small in-memory sources for loader tests, importable as "data_sources:Name" in configs."""

import io

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def png_bytes(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


def digit_image(i: int) -> np.ndarray:
  """sklearn's digit scan i as uint8 (16, 16, 3)."""
  d = load_digits()
  img = np.clip(d.images[i % len(d.images)] * 16, 0, 255).astype(np.uint8)
  return np.repeat(np.kron(img, np.ones((2, 2), np.uint8))[..., None], 3, axis=-1)


class IndexSource:
  """Example i: {"index": i, "image": a 4x4 image of value i % 256}; to check which
  examples a process reads and in what order."""

  def __init__(self, n: int = 100, offset: int = 0):
    self.n, self.offset = n, offset

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"key": f"idx{i}", "index": np.int64(self.offset + i),
            "image": np.full((4, 4, 1), (self.offset + i) % 256, np.uint8)}


class PngSource:
  """`n` digit scans as PNG bytes with captions; the examples in `corrupt` hold garbage."""

  def __init__(self, n: int = 100, corrupt=()):
    self.n, self.corrupt = n, set(corrupt)

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    data = (b"not an image " * 8) if i in self.corrupt else png_bytes(digit_image(i))
    return {"key": f"img{i:03d}.png", "image": data, "label": np.int32(i % 10),
            "index": np.int64(i), "texts": (f"digit number {i % 10}",)}
