"""Epoch-wise random order of a source without storing a permutation.

Position i of epoch e maps to example `permute(i, n, key(seed, e))`: a Feistel network
over the next even power of two with cycle walking, a bijection on [0, n) that costs a
few microseconds and no memory, so that a billion-example dataset shuffles globally and
each epoch gets a new order. (grain's own index shuffle takes ~0.5 ms an index here,
more than decoding a small image.)
"""

from __future__ import annotations

_MASK = (1 << 64) - 1
_ROUNDS = 6


def _mix(x: int) -> int:
  """splitmix64's finaliser: a 64-bit integer hash with good avalanche."""
  x &= _MASK
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
  return x ^ (x >> 31)


def epoch_key(seed: int, epoch: int) -> int:
  return _mix(_mix(seed * 0x9E3779B97F4A7C15 + 1) + epoch)


def permute(i: int, n: int, key: int) -> int:
  """The image of i in a pseudo-random permutation of [0, n) chosen by `key`."""
  if not 0 <= i < n:
    raise IndexError(f"index {i} out of range for {n} examples")
  if n <= 2:
    return i if n == 1 or key & 1 == 0 else 1 - i
  bits = (n - 1).bit_length()
  half = (bits + 1) // 2
  low = (1 << half) - 1
  x = i
  while True:  # Cycle walking: the domain is < 4n, so under 4 rounds trips expected.
    left, right = x >> half, x & low
    for r in range(_ROUNDS):
      left, right = right, left ^ (_mix(right ^ (key + r * 0xD1B54A32D192ED03)) & low)
    x = (left << half) | right
    if x < n:
      return x


class ShuffledRepeat:
  """A source repeated forever, each epoch in its own order: element j is example
  permute(j % n, n, epoch_key(seed, j // n)) of `source`."""

  def __init__(self, source, seed: int, length: int):
    self.source, self.seed, self.length = source, seed, length
    self.n = len(source)
    self._key_epoch, self._key = None, None

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, j: int):
    epoch, i = divmod(int(j), self.n)
    if epoch != self._key_epoch:
      self._key_epoch, self._key = epoch, epoch_key(self.seed, epoch)
    return self.source[permute(i, self.n, self._key)]
