"""The built-in `digits` image-text source: scikit-learn's 1797 real 8x8 handwritten digit scans.

Each record: `image` uint8 (8, 8, 1) in [0, 255], `label` int, `texts` the caption of
every template for its class, e.g. "a photo of the digit seven.". The split is
deterministic: every 5th scan (index % 5 == 0) is `test` (360), the rest `train` (1437).
"""

from __future__ import annotations

import functools

import numpy as np

from bigvl.registry import SOURCES

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a photo of the digit {}.",
    "a scan of a handwritten {}.",
    "the number {}.",
    "a blurry picture of a {}.",
    "a handwritten digit {}.",
)
SPLITS = ("train", "test", "all")


@functools.cache
def _load():
  from sklearn.datasets import load_digits  # Ships the scans; nothing is downloaded.
  d = load_digits()
  images = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)[..., None]
  return images, d.target.astype(np.int32)


@SOURCES.register("digits")
class Digits:
  """Random-access digits records for one split."""

  def __init__(self, split: str = "train", templates: tuple[str, ...] | list[str] | None = None):
    if split not in SPLITS:
      raise ValueError(f"Unknown digits split {split!r}; valid: {SPLITS}.")
    images, labels = _load()
    idx = np.arange(len(labels))
    if split == "train":
      idx = idx[idx % 5 != 0]
    elif split == "test":
      idx = idx[idx % 5 == 0]
    self.split = split
    self._images = images[idx]
    self._labels = labels[idx]
    self.class_names = CLASS_NAMES
    self.templates = tuple(templates or TEMPLATES)

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, i: int) -> dict:
    label = int(self._labels[i])
    return {"image": self._images[i], "label": np.int32(label),
            "texts": tuple(t.format(CLASS_NAMES[label]) for t in self.templates)}

  def texts(self) -> list[str]:
    """Every caption of the split (for tokenizer training)."""
    return [t.format(CLASS_NAMES[int(l)]) for l in self._labels for t in self.templates]

  def __repr__(self):
    return f"Digits(split={self.split!r}, n={len(self)})"
