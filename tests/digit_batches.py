"""Fixed training batches from real digits scans, for tests that compare two code paths."""

import numpy as np


def digit_batches(n_batches: int, batch: int, text_len: int, vocab: int) -> list[dict]:
  """Digits scans upsampled to 16x16 in [-1, 1], paired with label-derived token ids.

  Returns `n_batches` dicts of `image` (batch, 16, 16, 1) float32 and `text`
  (batch, text_len) int32, the same on every call.
  """
  from sklearn.datasets import load_digits
  digits = load_digits()
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n_batches):
    idx = rng.choice(len(digits.images), batch, replace=False)
    img = np.kron(digits.images[idx], np.ones((2, 2)))[..., None] / 8.0 - 1.0
    text = np.zeros((batch, text_len), np.int32)
    text[:, 0] = 3 + digits.target[idx]                    # "the digit <k>"
    text[:, 1] = rng.integers(13, vocab, batch)            # Caption noise.
    text[:, 2] = 2                                         # EOS; the rest is padding.
    out.append({"image": img.astype(np.float32), "text": text})
  return out
