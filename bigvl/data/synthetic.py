"""The `synthetic` source: random images, labels and captions of any size, from nothing on disk.

What a paper config trains on under its `smoke` arg and what `python -m bigvl.plan` reads in
place of a dataset it does not have (config.data.stand_in): the same record fields as the
real source (`image` uint8 (size, size, 3), `label`, `texts`), so the config's own pp runs
on it unchanged. Each record is a function of (seed, split, index): the class's colour plus
noise, so a tiny model can fit it, and captions from the class name and templates.
"""

from __future__ import annotations

import numpy as np

from bigvl.registry import SOURCES

TEMPLATES = ("a photo of a {}.", "a picture of the {}.", "an image showing a {}.")
SPLITS = ("train", "validation", "test")


@SOURCES.register("synthetic")
class Synthetic:
  """`size` records of `image_size`^2 x 3 uint8 images in `num_classes` classes.

  class_names: "class 0", "class 1", ... unless given (e.g. the ImageNet names).
  """

  def __init__(self, split: str = "train", size: int = 256, image_size: int = 64,
               num_classes: int = 10, seed: int = 0, class_names=None, templates=None):
    if split not in SPLITS:
      raise ValueError(f"Unknown synthetic split {split!r}; valid: {SPLITS}.")
    if size < 1 or image_size < 1 or num_classes < 1:
      raise ValueError(f"synthetic source: size={size}, image_size={image_size} and "
                       f"num_classes={num_classes} must all be >= 1.")
    names = tuple(class_names) if class_names else tuple(
        f"class {k}" for k in range(num_classes))
    if len(names) != num_classes:
      raise ValueError(f"synthetic source: {len(names)} class_names for num_classes="
                       f"{num_classes}; give one name per class.")
    self.split, self.size, self.image_size = split, size, image_size
    self.num_classes, self.seed = num_classes, seed
    self.class_names = names
    self.templates = tuple(templates or TEMPLATES)
    colours = np.random.default_rng([seed, 7]).integers(0, 256, (num_classes, 3))
    self._colours = colours.astype(np.float32)

  def __len__(self) -> int:
    return self.size

  def _label(self, i: int) -> int:
    return (i * 7919 + SPLITS.index(self.split)) % self.num_classes

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.size:
      raise IndexError(f"synthetic index {i} out of range [0, {self.size}).")
    label = self._label(i)
    rng = np.random.default_rng([self.seed, SPLITS.index(self.split), i])
    noise = rng.normal(0, 32, (self.image_size, self.image_size, 3))
    image = np.clip(self._colours[label] + noise, 0, 255).astype(np.uint8)
    return {"image": image, "label": np.int32(label),
            "texts": tuple(t.format(self.class_names[label]) for t in self.templates)}

  def texts(self) -> list[str]:
    """Every caption of the split (for tokenizer training)."""
    return [t.format(self.class_names[self._label(i)]) for i in range(self.size)
            for t in self.templates]

  def __repr__(self):
    return (f"Synthetic(split={self.split!r}, n={self.size}, image_size={self.image_size}, "
            f"num_classes={self.num_classes})")
