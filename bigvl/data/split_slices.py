"""TFDS-style split slices for in-memory sources: "train", "train[:5000]", "test[2000:]".

A slice picks records [start, stop) of the named split, in the split's own order, with
Python's rules for omitted and negative bounds; record keys keep the index in the whole
split, so a slice's records are the same records under the same keys.
"""

from __future__ import annotations

import re

_SLICE = re.compile(r"^(?P<name>[A-Za-z_][\w-]*)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def parse_split(split: str, valid: tuple[str, ...] | list[str], source: str
                ) -> tuple[str, int | None, int | None]:
  """("train[:5000]", ("train", "test"), "fashion_mnist") -> ("train", None, 5000).

  ValueError naming `source`, the split and the valid names when the name is not one of
  `valid` or the slice is not `[start:stop]` with integer bounds.
  """
  m = _SLICE.match(split.strip()) if isinstance(split, str) else None
  if m is None or m["name"] not in valid:
    raise ValueError(f"Unknown {source} split {split!r}; valid: {tuple(valid)}, each optionally "
                     "sliced as name[start:stop] (e.g. 'train[:5000]').")
  to_int = lambda s: int(s) if s not in (None, "") else None
  return m["name"], to_int(m["start"]), to_int(m["stop"])


def slice_indices(n: int, start: int | None, stop: int | None, split: str, source: str
                  ) -> range:
  """Indices into a split of `n` records that the slice [start:stop] picks; ValueError when
  it picks none (an empty slice is a mistake in a config, not an empty dataset)."""
  picked = range(n)[slice(start, stop)]
  if len(picked) == 0:
    raise ValueError(f"{source} split {split!r} picks no record of the {n} in the split; "
                     "check its [start:stop] bounds.")
  return picked
