"""Splash attention (Pallas TPU / Mosaic): the TPU body of `attention(impl="pallas")`.

A wrapper around `jax.experimental.pallas.ops.tpu.splash_attention` that takes bigvl's
layout and masks and keeps the semantics of `bigvl.kernels.attention.attention_reference`
(the reference for this file):

* Layout. bigvl is (batch, length, heads, head_dim); splash takes (heads, length, head_dim)
  per example, so the wrapper transposes and `vmap`s over the batch. Splash does not scale
  the logits: q is multiplied by head_dim ** -0.5 first.
* Masks. `causal=True` is splash's static `CausalMask` (query i sees keys j <= i, aligned at
  the start), whose key blocks past the diagonal are skipped. A key-padding mask becomes
  segment ids: every query gets the id of its segment (0 without `segment_ids`), visible
  keys keep theirs, masked and block-padding keys get -1, which no query has.
* Any length. q and k/v are zero-padded to block multiples (Mosaic tiles are multiples of
  128) and the output sliced back.
* Rows with no visible key (every key masked, or causal + padding hiding keys 0..i). The
  reference's softmax over `finfo.min` logits gives them the uniform average of all kv_len
  values; splash would average only the keys of the blocks it visited, padding included.
  The wrapper finds those rows exactly (sort + searchsorted, O(l log l), no (lq, lk)
  array) and replaces their output by `mean(v)`, as the reference: so values and gradients
  equal the reference for them too (dq, dk get nothing from such rows; dv gets do / kv_len).
* `segment_ids=(q_ids, kv_ids)` (int32, >= 0; negative ids are reserved) restricts
  attention to equal ids, for packed sequences; it combines with `mask` and `causal`.

`interpret=True` (or a `pltpu.InterpretParams`) runs the same kernels in the Pallas
interpreter on CPU, which is how the tests check them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from bigvl.kernels import flash_attention

# Mosaic's lane width: splash tiles its segment ids in 128-wide rows, so every block
# (forward and backward, query and key) must be a multiple of it.
LANES = 128
# Candidate default tiles, largest first (not yet measured on a TPU).
DEFAULT_BLOCKS = (512, 256, 128)
# The segment id of masked and padding keys; queries never have it (ids are >= 0).
HIDDEN = -1


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def default_block(length: int) -> int:
  """The default tile for a sequence: the candidate that pads `length` least (the larger
  on ties), e.g. 577 -> 128 (pads to 640), 196 -> 256, 4096 -> 512."""
  return min(DEFAULT_BLOCKS, key=lambda b: (_round_up(length, b), -b))


def block_error(block_sizes) -> str | None:
  """Why Mosaic cannot take these tiles (a `flash_attention.BlockSizes`, fields None =
  default), or None when it can."""
  if block_sizes is None:
    return None
  bad = {f: getattr(block_sizes, f) for f in ("block_q", "block_k", "block_q_bwd", "block_k_bwd")
         if getattr(block_sizes, f) is not None and getattr(block_sizes, f) % LANES}
  if bad:
    return (f"splash attention (TPU) tiles must be multiples of {LANES}; got {bad}. Pass "
            "block_sizes=None for the defaults.")
  return None


def _tiles(block_sizes, lq: int, lk: int) -> tuple[int, int, int, int]:
  """(block_q, block_k, block_q_bwd, block_k_bwd) for these lengths."""
  get = lambda f, length: (getattr(block_sizes, f, None) if block_sizes is not None
                           else None) or default_block(length)
  return (get("block_q", lq), get("block_k", lk), get("block_q_bwd", lq),
          get("block_k_bwd", lk))


def first_visible_key(q_ids: jax.Array, kv_ids: jax.Array) -> jax.Array:
  """Per query, the position of the first key with its segment id (kv_len if none).

  Args:
    q_ids: (lq,) int32; kv_ids: (lk,) int32, HIDDEN for keys no query may see.
  Returns:
    (lq,) int32.
  """
  lk = kv_ids.shape[0]
  pos = jnp.arange(lk, dtype=jnp.int32)
  hidden = (kv_ids == HIDDEN).astype(jnp.int32)
  # Visible keys first, by id, then by position; hidden ones get the largest id so the
  # whole id column stays sorted for searchsorted.
  hidden_s, ids_s, pos_s = lax.sort((hidden, kv_ids, pos), num_keys=3)
  ids_s = jnp.where(hidden_s == 0, ids_s, jnp.iinfo(jnp.int32).max)
  idx = jnp.searchsorted(ids_s, q_ids, side="left")
  at = jnp.minimum(idx, lk - 1)
  found = (idx < lk) & (ids_s[at] == q_ids) & (hidden_s[at] == 0)
  return jnp.where(found, pos_s[at], lk)


def _kernel(heads: int, lq: int, lk: int, causal: bool, tiles, interpret):
  bq, bk, bq_b, bk_b = tiles
  shape = (lq, lk)
  head_mask = splash.CausalMask(shape) if causal else splash.FullMask(shape)
  blocks = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk,
                             block_q_dkv=bq_b, block_kv_dkv=bk_b, block_kv_dkv_compute=bk_b,
                             block_q_dq=bq_b, block_kv_dq=bk_b)
  return splash.make_splash_mha_single_device(
      splash.MultiHeadMask([head_mask] * heads), block_sizes=blocks, interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                     mask: jax.Array | None = None, causal: bool = False,
                     segment_ids: tuple[jax.Array, jax.Array] | None = None,
                     block_sizes=None, interpret=False) -> jax.Array:
  """Softmax attention through splash attention; differentiable (splash's custom VJP).

  Args:
    q: (batch, q_len, heads, head_dim); k, v: (batch, kv_len, heads, head_dim), one dtype.
    mask: None or a key-padding mask, bool (batch, kv_len), True = attend.
    causal: query i attends to keys j <= i (aligned at the start).
    segment_ids: None or (q_ids (batch, q_len), kv_ids (batch, kv_len)), int32 >= 0;
      a query sees only keys of its id.
    block_sizes: a `bigvl.kernels.flash_attention.BlockSizes` (block_q, block_k: forward;
      *_bwd: both backward kernels), multiples of 128; None fields = `default_block`.
    interpret: False = Mosaic (TPU); True or a `pltpu.InterpretParams` = interpreter.
  Returns:
    (batch, q_len, heads, head_dim) in q's dtype; equal to `attention_reference` with the
    same masks, rows with no visible key included.
  """
  flash_attention.check_inputs("splash_attention", q, k, v, mask)
  b, lq, h, d = q.shape
  lk = k.shape[1]
  if segment_ids is not None and (segment_ids[0].shape != (b, lq) or
                                  segment_ids[1].shape != (b, lk)):
    raise ValueError(f"segment_ids must be (q_ids {(b, lq)}, kv_ids {(b, lk)}); got "
                     f"{tuple(s.shape for s in segment_ids)}.")
  message = block_error(block_sizes)
  if message:
    raise ValueError(message)
  tiles = _tiles(block_sizes, lq, lk)
  lq_pad, lk_pad = padded_lengths(lq, lk, block_sizes)

  q_scaled = (q.astype(jnp.float32) * d ** -0.5).astype(q.dtype)
  # (b, l, h, d) -> (b, h, l_pad, d): splash's per-example layout, padded to the tiles.
  to_splash = lambda x, length: jnp.pad(jnp.swapaxes(x, 1, 2),
                                        ((0, 0), (0, 0), (0, length - x.shape[1]), (0, 0)))
  qs, ks, vs = to_splash(q_scaled, lq_pad), to_splash(k, lk_pad), to_splash(v, lk_pad)
  kernel = _kernel(h, lq_pad, lk_pad, causal, tiles, interpret)

  masked = mask is not None or segment_ids is not None
  if not masked and lk_pad == lk:
    o = jax.vmap(kernel)(qs, ks, vs)
  else:
    q_ids, kv_ids = segment_ids if segment_ids is not None else (
        jnp.zeros((b, lq), jnp.int32), jnp.zeros((b, lk), jnp.int32))
    q_ids, kv_ids = q_ids.astype(jnp.int32), kv_ids.astype(jnp.int32)
    if mask is not None:
      kv_ids = jnp.where(mask, kv_ids, HIDDEN)
    # Padding queries see the real keys of id 0 or nothing; their rows are sliced away.
    q_pad = jnp.pad(q_ids, ((0, 0), (0, lq_pad - lq)))
    kv_pad = jnp.pad(kv_ids, ((0, 0), (0, lk_pad - lk)), constant_values=HIDDEN)
    o = jax.vmap(lambda q, k, v, qi, ki: kernel(q, k, v, segment_ids=splash.SegmentIds(qi, ki)))(
        qs, ks, vs, q_pad, kv_pad)
  o = jnp.swapaxes(o[:, :, :lq], 1, 2).astype(q.dtype)
  if not masked:
    return o   # Every row sees key 0.
  first = jax.vmap(first_visible_key)(q_ids, kv_ids)                       # (b, lq)
  empty = first >= lk
  if causal:
    empty |= first > jnp.arange(lq)[None, :]
  # The reference's uniform softmax over all kv_len keys for such rows.
  mean_v = jnp.mean(v.astype(jnp.float32), axis=1, keepdims=True).astype(v.dtype)
  return jnp.where(empty[:, :, None, None], mean_v, o)


def padded_lengths(lq: int, lk: int, block_sizes=None) -> tuple[int, int]:
  """The block-padded (q_len, kv_len) the kernels run on."""
  tiles = _tiles(block_sizes, lq, lk)
  return (_round_up(lq, math.lcm(tiles[0], tiles[2])), _round_up(lk, math.lcm(tiles[1], tiles[3])))

