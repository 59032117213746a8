"""Interleaved image-text sequences (Flamingo) built from any image-text source.

The `interleaved` source packs `k` examples of an inner source into one record:
`images` (a list of the k inner images, as the inner source gives them), `texts` (the
k caption tuples), `labels` (k,) when the inner records have one. The pp then turns that
into model inputs:

    each_image('resize(16)|value_range(-1, 1)')   # the image pp, on every image -> (k, h, w, c)
    interleave_text                                 # "<image>cap1<|endofchunk|><image>cap2..."
    tokenize                                        # the tokenizer keeps the markers whole

Record i's k examples are drawn without replacement from the inner source by a generator
seeded with (seed, i), so a record is the same on every read and every host.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bigvl.data import transforms
from bigvl.registry import PP_OPS, SOURCES

IMAGE = "<image>"
END_OF_CHUNK = "<|endofchunk|>"
SPECIAL_TOKENS = (IMAGE, END_OF_CHUNK)


@SOURCES.register("interleaved")
class Interleaved:
  """k examples of `inner` (a source config: `dict(name="digits", split="train")`) per
  record; `size` records (default: len(inner) // k)."""

  def __init__(self, inner: dict, k: int = 4, seed: int = 0, size: int | None = None):
    if k < 1:
      raise ValueError(f"interleaved source: k={k} must be >= 1.")
    self.inner = SOURCES.build_from_config(inner, where="the interleaved source's inner")
    if len(self.inner) < k:
      raise ValueError(f"interleaved source: the inner source has {len(self.inner)} examples, "
                       f"fewer than k={k}.")
    self.k, self.seed = k, seed
    self.size = size or len(self.inner) // k
    for attr in ("class_names", "templates"):
      if hasattr(self.inner, attr):
        setattr(self, attr, getattr(self.inner, attr))

  def __len__(self) -> int:
    return self.size

  def indices(self, i: int) -> np.ndarray:
    rng = np.random.default_rng((self.seed, i))
    return rng.choice(len(self.inner), self.k, replace=False)

  def __getitem__(self, i: int) -> dict:
    exs = [self.inner[int(j)] for j in self.indices(i)]
    out = {"images": [ex["image"] for ex in exs],
           "texts": [ex["texts"] if "texts" in ex else (ex["text"],) for ex in exs]}
    if all("label" in ex for ex in exs):
      out["labels"] = np.asarray([ex["label"] for ex in exs], np.int32)
    return out

  def texts(self) -> list[str]:
    """The inner captions as they appear in a sequence (between the markers), so that a
    tokenizer trained on them splits them as the model will see them."""
    return [f"{IMAGE}{t}{END_OF_CHUNK}" for t in self.inner.texts()]


@PP_OPS.register("each_image")
def each_image(spec: str, key: str = "images"):
  """Runs the pp `spec` on every image of the list `ex[key]` and stacks them: (k, h, w, c).

  A value_range/normalize ending `spec` may run on the device on the stacked field, as at the
  top level (`transforms.split_device_tail` reads the op's `device_split`)."""
  sub_ops = transforms.build_ops(spec)

  def make(ops):
    sub = transforms.chain(ops)

    def op(ex, rng):
      ex[key] = np.stack([sub({"image": img}, rng)["image"] for img in ex[key]])
      return ex
    op.touches = frozenset([key])
    return op

  op = make(sub_ops)
  host_ops, deferred = transforms.split_device_tail(sub_ops)
  if set(deferred) <= {"image"}:  # Ops on other fields of the sub-example have no batch field.
    # Re-keyed to the stacked field: elementwise, so the same map on (k, h, w, c).
    affines = tuple(dataclasses.replace(a, key=key) for a in deferred.get("image", ()))
    op.device_split = transforms.DeviceSplit(key, make(host_ops), affines)
  return op


@PP_OPS.register("interleave_text")
def interleave_text(key: str = "texts", out: str = "text", image: str = IMAGE,
                    end: str = END_OF_CHUNK):
  """One caption per example (random in training, the first when evaluating), each after
  an image marker and before an end-of-chunk marker, joined into one string. Empty and
  whitespace captions are passed over; an example with no other raises
  transforms.MissingText (the loader skips the record)."""
  @transforms.touches(key, out)
  def op(ex, rng):
    where = f"{key!r} of record {ex.get('key', '?')!r}"
    texts = [transforms.usable_texts(t, f"{where}, example {i}") for i, t in enumerate(ex[key])]
    caps = [t[0] if rng is None else t[int(rng.integers(len(t)))] for t in texts]
    ex[out] = "".join(f"{image}{c}{end}" for c in caps)
    return ex
  return op
