"""Scanned and unscanned encoders hold the same numbers: converting one's params to the other.

An unscanned `layers.Encoder` keeps block i's params under `.../encoder/block{i}/...`; a
scanned one (`scan_layers=True`) keeps all of them stacked along a new leading axis of size
depth under `.../encoder/blocks/block/...` (`layers.SCANNED`). The conversion is exact
(stack / index), so a checkpoint, a converted HF/open_clip model or an init_from source of
either layout loads into a model of the other: `checkpoint.merge_params` calls
`match_layout` with the target's paths before matching by path and shape.

Both functions work on flat {"/"-joined path: array} dicts, the form checkpoints are loaded in.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from bigvl.models.layers import SCANNED

_STACKED = f"{SCANNED}/block/"


def _split_unscanned(key: str):
  """"a/encoder/block3/attn/x" -> ("a/encoder", 3, "attn/x"); None for other keys."""
  m = re.match(r"^(?:(.*)/)?block(\d+)/(.*)$", key)
  return (m.group(1) or "", int(m.group(2)), m.group(3)) if m else None


def _split_scanned(key: str):
  """"a/encoder/blocks/block/attn/x" -> ("a/encoder", "attn/x"); None for other keys."""
  i = key.find(_STACKED)
  if i < 0 or (i > 0 and key[i - 1] != "/"):
    return None
  return key[:max(i - 1, 0)], key[i + len(_STACKED):]


def _join(*parts: str) -> str:
  return "/".join(p for p in parts if p)


def stack_layers(flat: dict[str, np.ndarray], prefixes: Iterable[str]) -> dict[str, np.ndarray]:
  """Unscanned -> scanned for the encoders at `prefixes` ("img/encoder"): every
  `<prefix>/block{i}/<rest>` (i = 0..depth-1, all present) becomes
  `<prefix>/blocks/block/<rest>` of shape (depth, ...)."""
  prefixes = set(prefixes)
  groups: dict[tuple[str, str], dict[int, np.ndarray]] = {}
  out = {}
  for key, value in flat.items():
    parts = _split_unscanned(key)
    if parts and parts[0] in prefixes:
      groups.setdefault((parts[0], parts[2]), {})[parts[1]] = value
    else:
      out[key] = value
  for (prefix, rest), by_index in groups.items():
    depth = max(by_index) + 1
    if sorted(by_index) != list(range(depth)):
      raise ValueError(f"Cannot stack {prefix}/block*/{rest}: blocks {sorted(by_index)} are "
                       f"not 0..{depth - 1}.")
    out[_join(prefix, _STACKED + rest)] = np.stack([np.asarray(by_index[i])
                                                    for i in range(depth)])
  return out


def unstack_layers(flat: dict[str, np.ndarray], prefixes: Iterable[str]) -> dict[str, np.ndarray]:
  """Scanned -> unscanned for the encoders at `prefixes`: `<prefix>/blocks/block/<rest>` of
  shape (depth, ...) becomes `<prefix>/block{i}/<rest>` for each i."""
  prefixes = set(prefixes)
  out = {}
  for key, value in flat.items():
    parts = _split_scanned(key)
    if parts and parts[0] in prefixes:
      value = np.asarray(value)
      for i in range(value.shape[0]):
        out[_join(parts[0], f"block{i}", parts[1])] = value[i]
    else:
      out[key] = value
  return out


def match_layout(flat: dict[str, np.ndarray], target_keys: Iterable[str]) -> dict[str, np.ndarray]:
  """`flat` with each encoder's blocks stacked or unstacked to the layout `target_keys` (the
  paths of the model being loaded into) use; encoders already alike are left as they are."""
  target_keys = list(target_keys)
  want_scanned = {p[0] for p in map(_split_scanned, target_keys) if p}
  want_unscanned = {p[0] for p in map(_split_unscanned, target_keys) if p}
  have_scanned = {p[0] for p in map(_split_scanned, flat) if p}
  have_unscanned = {p[0] for p in map(_split_unscanned, flat) if p}
  flat = stack_layers(flat, (want_scanned & have_unscanned) - have_scanned)
  return unstack_layers(flat, (want_unscanned & have_scanned) - have_unscanned)
