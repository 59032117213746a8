"""Flash attention in Pallas: online-softmax forward, recomputing backward (custom VJP).

Layout is bigvl's (batch, length, heads, head_dim) throughout: the BlockSpecs squeeze the
batch and head axes, so no transpose is ever materialised. One program of the forward
kernel owns `block_q` queries of one (batch, head) and streams over the keys in
`block_k` tiles, keeping the running row max `m`, normaliser `l` and un-normalised output
in registers (FlashAttention-2, Dao 2023). The backward recomputes the probabilities
tile by tile from the saved (`m`, `l`) and runs two kernels: one program per key block
accumulates dK, dV over the queries, one program per query block accumulates dQ over the
keys; neither ever holds a (q_len, kv_len) matrix.

Lowering: Triton on GPU (`pl.pallas_call` with a grid and BlockSpecs, Triton
`CompilerParams`), the HLO interpreter on CPU (`interpret=True`). With `interpret=None`
the choice follows the platform the program is lowered for (`bigvl.kernels.platform`),
not the host's default backend. These kernels have no TPU body: on TPU,
`bigvl.kernels.attention.attention(impl="pallas")` runs splash attention instead
(`bigvl.kernels.splash_attention`).

Semantics equal `bigvl.kernels.attention.attention_reference` exactly, including rows
whose every key is masked (they average all `kv_len` values, as the reference's
`where(mask, logits, finfo.min)` softmax does).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from bigvl.kernels import platform

# Logit of a key the caller masked (causal or padding mask): the reference's value, so a
# row with no visible key degenerates to the same uniform average as the reference.
MASKED = float(jnp.finfo(jnp.float32).min)
# exp(x) == exp2(x * LOG2E); exp2 is the native instruction on GPUs.
LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes. Each is clipped to the (power-of-two rounded) sequence length.

  block_q, block_k: query / key tile of the forward kernel.
  block_q_bwd, block_k_bwd: query / key tile of both backward kernels.

  None (the defaults) picks: block_q 128; block_k 128; block_q_bwd 64 for head dims up to
  64 and 128 above (on an H200, benchmarks/kernels_gpu.md, 128 made fwd+bwd at head dim
  128 1.4x to 1.7x faster and was within 5% at 64); block_k_bwd 64. Each tile that a
  kernel's loop streams (keys/values in the forward and dq kernels, queries/output grads
  in the dk/dv kernel) is then halved until its pipelined buffers fit shared memory
  (`loop_smem_bytes`): float32 at head dim 128 with 128-row tiles asked for 256 KiB on an
  H200, which has 227 KiB, and did not launch.
  """
  block_q: int | None = None
  block_k: int | None = None
  block_q_bwd: int | None = None
  block_k_bwd: int | None = None


# Shared memory a kernel's loop may take for its streamed tiles (H100/H200: 227 KiB per
# block), leaving room for the rest.
SMEM_BUDGET = 192 * 1024
PIPELINE_STAGES = 2


def loop_smem_bytes(block: int, head_dim: int, itemsize: int) -> int:
  """Shared memory of the two (block, head_dim) tiles a kernel's loop loads per step, times
  the pipeline stages: 2 * 2 * 128 * 128 * 4 = 262144 bytes is exactly what the H200
  reported for float32 at head dim 128 with 128-row tiles."""
  return PIPELINE_STAGES * 2 * block * head_dim * itemsize


def _default_block(preferred: int, head_dim: int, itemsize: int) -> int:
  block = preferred
  while block > 16 and loop_smem_bytes(block, head_dim, itemsize) > SMEM_BUDGET:
    block //= 2
  return block


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static description of one padded call (hashable: a custom_vjp nondiff argument)."""
  sm_scale: float
  causal: bool
  kv_len: int          # Keys at or beyond this index are block padding.
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int
  has_mask: bool       # A key-padding mask array is passed.
  interpret: bool
  num_warps: int | None

  @property
  def skip_blocks(self) -> bool:
    # Causal tiles past the diagonal are skipped, except under a padding mask: there a row
    # can have no visible key, and the reference then averages *every* key, skipped or not.
    return self.causal and not self.has_mask


def _dot(a, b, *, ta: bool = False, tb: bool = False):
  """a @ b with optional transposes, accumulated in float32 (Triton folds the transposes)."""
  dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _logits(q, k, start_q, start_k, mask_block, cfg: _Config):
  """Scaled logits of one (block_q, block_k) tile, log2 domain, with every mask applied.

  Returns (s, keep): `keep` is None when no mask applies, else the tile's visible entries
  (excluding block padding, which is -inf in `s` and gets no gradient anyway).
  """
  bq, bk = q.shape[0], k.shape[0]
  s = _dot(q, k, tb=True) * (cfg.sm_scale * LOG2E)
  keep = None
  if cfg.causal:
    rows = start_q + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    cols = start_k + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    keep = cols <= rows
  if mask_block is not None:
    m = jnp.broadcast_to(mask_block[None, :] != 0, (bq, bk))
    keep = m if keep is None else keep & m
  if keep is not None:
    s = jnp.where(keep, s, MASKED)
  if cfg.kv_len % cfg.block_k or cfg.kv_len % cfg.block_k_bwd:
    cols = start_k + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    # Padding is -inf, not MASKED: a row with no visible key must average the kv_len real
    # keys only, like the unpadded reference.
    s = jnp.where(cols < cfg.kv_len, s, -jnp.inf)
  return s, keep


def _num_kv_blocks(start_q, block_q, block_k, n_kv, cfg: _Config):
  """Key blocks a query tile must visit: causal tiles stop after the diagonal."""
  if not cfg.skip_blocks:
    return n_kv
  return jnp.minimum(n_kv, lax.div(start_q + block_q + block_k - 1, block_k))


# ------------------------------------------------------------------------------------------
# Forward.


def _fwd_kernel(q_ref, k_ref, v_ref, *rest, cfg: _Config):
  if cfg.has_mask:
    mask_ref, o_ref, m_ref, l_ref = rest
  else:
    mask_ref = None
    o_ref, m_ref, l_ref = rest
  bq, bk = cfg.block_q, cfg.block_k
  start_q = pl.program_id(0) * bq
  q = q_ref[...]
  n_kv = k_ref.shape[0] // bk

  def body(j, carry):
    acc, m_prev, l_prev = carry
    start_k = j * bk
    k = k_ref[pl.ds(start_k, bk), :]
    v = v_ref[pl.ds(start_k, bk), :]
    mask_block = None if mask_ref is None else mask_ref[pl.ds(start_k, bk)]
    s, _ = _logits(q, k, start_q, start_k, mask_block, cfg)
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
    # The first tile always holds key 0 (never padding), so m_next is finite from here on
    # and m_prev - m_next never computes -inf - -inf.
    alpha = jnp.exp2(m_prev - m_next)
    p = jnp.exp2(s - m_next[:, None])
    l_next = alpha * l_prev + jnp.sum(p, axis=1)
    acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v)
    return acc, m_next, l_next

  init = (jnp.zeros((bq, q.shape[1]), jnp.float32),
          jnp.full((bq,), -jnp.inf, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc, m, l = lax.fori_loop(0, _num_kv_blocks(start_q, bq, bk, n_kv, cfg), body, init)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  m_ref[...] = m
  l_ref[...] = l


def _compiler_params(cfg: _Config, head_dim: int):
  if cfg.interpret:
    return None
  from jax.experimental.pallas import triton as plgpu
  warps = cfg.num_warps or (4 if head_dim <= 64 else 8)
  return plgpu.CompilerParams(num_warps=warps, num_stages=2)


def forward_call(q, k, v, kv_mask, cfg: _Config):
  """The forward pallas_call on block-padded inputs.

  Args:
    q: (b, lq, h, d) with lq a multiple of block_q; k, v: (b, lk, h, d), lk a multiple of
      block_k; kv_mask: None or int32 (b, lk), nonzero = visible.
  Returns:
    o (b, lq, h, d) in q's dtype; m, l (b, h, lq) float32: the row max of the log2-domain
    logits and the softmax normaliser (logsumexp = (m + log2 l) / log2 e). They are kept
    apart because for a row with every key masked m is finfo.min, where m + log2(l) would
    round l away and the backward could not rebuild the uniform average.
  """
  b, lq, h, d = q.shape
  lk = k.shape[1]
  bq = cfg.block_q
  grid = (lq // bq, b, h)
  in_specs = [
      pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
      pl.BlockSpec((None, lk, None, d), lambda i, bi, hi: (bi, 0, hi, 0)),
      pl.BlockSpec((None, lk, None, d), lambda i, bi, hi: (bi, 0, hi, 0)),
  ]
  args = [q, k, v]
  if kv_mask is not None:
    in_specs.append(pl.BlockSpec((None, lk), lambda i, bi, hi: (bi, 0)))
    args.append(kv_mask)
  stat_spec = pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i))
  stat_shape = jax.ShapeDtypeStruct((b, h, lq), jnp.float32)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg),
      grid=grid,
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
                 stat_spec, stat_spec],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), stat_shape, stat_shape],
      interpret=cfg.interpret,
      compiler_params=_compiler_params(cfg, d),
      name="bigvl_flash_attention_fwd",
  )(*args)


# ------------------------------------------------------------------------------------------
# Backward.


def _probs(s, m, l):
  """Softmax probabilities of a tile from the forward's row statistics."""
  return jnp.exp2(s - m[:, None]) / l[:, None]


def _dq_kernel(q_ref, k_ref, v_ref, *rest, cfg: _Config):
  if cfg.has_mask:
    mask_ref, do_ref, m_ref, l_ref, delta_ref, dq_ref = rest
  else:
    mask_ref = None
    do_ref, m_ref, l_ref, delta_ref, dq_ref = rest
  bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
  start_q = pl.program_id(0) * bq
  q, do = q_ref[...], do_ref[...]
  m, l, delta = m_ref[...], l_ref[...], delta_ref[...]
  n_kv = k_ref.shape[0] // bk

  def body(j, dq):
    start_k = j * bk
    k = k_ref[pl.ds(start_k, bk), :]
    v = v_ref[pl.ds(start_k, bk), :]
    mask_block = None if mask_ref is None else mask_ref[pl.ds(start_k, bk)]
    s, keep = _logits(q, k, start_q, start_k, mask_block, cfg)
    p = _probs(s, m, l)
    ds = p * (_dot(do, v, tb=True) - delta[:, None])
    if keep is not None:
      # Masked logits are constants in the reference (jnp.where); they only carry weight
      # in rows with no visible key, and even there get no gradient.
      ds = jnp.where(keep, ds, 0.0)
    return dq + _dot(ds.astype(k.dtype), k)

  dq = lax.fori_loop(0, _num_kv_blocks(start_q, bq, bk, n_kv, cfg), body,
                     jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)


def _dkdv_kernel(q_ref, k_ref, v_ref, *rest, cfg: _Config):
  if cfg.has_mask:
    mask_ref, do_ref, m_ref, l_ref, delta_ref, dk_ref, dv_ref = rest
  else:
    mask_ref = None
    do_ref, m_ref, l_ref, delta_ref, dk_ref, dv_ref = rest
  bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
  start_k = pl.program_id(0) * bk
  k, v = k_ref[...], v_ref[...]
  mask_block = None if mask_ref is None else mask_ref[...]
  n_q = q_ref.shape[0] // bq

  def body(i, carry):
    dk, dv = carry
    start_q = i * bq
    q = q_ref[pl.ds(start_q, bq), :]
    do = do_ref[pl.ds(start_q, bq), :]
    m = m_ref[pl.ds(start_q, bq)]
    l = l_ref[pl.ds(start_q, bq)]
    delta = delta_ref[pl.ds(start_q, bq)]
    s, keep = _logits(q, k, start_q, start_k, mask_block, cfg)
    p = _probs(s, m, l)
    dv = dv + _dot(p.astype(do.dtype), do, ta=True)
    ds = p * (_dot(do, v, tb=True) - delta[:, None])
    if keep is not None:
      ds = jnp.where(keep, ds, 0.0)
    dk = dk + _dot(ds.astype(q.dtype), q, ta=True)
    return dk, dv

  # Causal: query tiles that end before this key tile starts see none of it.
  first = lax.div(start_k, bq) if cfg.skip_blocks else 0
  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(first, n_q, body, (zeros, zeros))
  dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def backward_call(q, k, v, kv_mask, o, m, l, do, cfg: _Config):
  """The two backward pallas_calls on block-padded inputs (shapes as `forward_call`).

  Returns dq, dk, dv in the dtypes of q, k, v.
  """
  b, lq, h, d = q.shape
  lk = k.shape[1]
  bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
  # delta_i = sum_d o_id * do_id = sum_j p_ij dp_ij: an O(lq * d) reduction XLA fuses well.
  delta = jnp.einsum("bqhd,bqhd->bhq", o.astype(jnp.float32), do.astype(jnp.float32))
  has_mask = kv_mask is not None
  params = _compiler_params(cfg, d)

  def full(length):
    return pl.BlockSpec((None, length, None, d), lambda i, bi, hi: (bi, 0, hi, 0))

  def tile(length):
    return pl.BlockSpec((None, length, None, d), lambda i, bi, hi: (bi, i, hi, 0))

  def stats(length, tiled):
    return pl.BlockSpec((None, None, length),
                        (lambda i, bi, hi: (bi, hi, i)) if tiled else
                        (lambda i, bi, hi: (bi, hi, 0)))

  mask_full = [pl.BlockSpec((None, lk), lambda i, bi, hi: (bi, 0))] if has_mask else []
  mask_tile = [pl.BlockSpec((None, bk), lambda i, bi, hi: (bi, i))] if has_mask else []
  mask_arg = [kv_mask] if has_mask else []

  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg),
      grid=(lq // bq, b, h),
      in_specs=[tile(bq), full(lk), full(lk), *mask_full, tile(bq),
                stats(bq, True), stats(bq, True), stats(bq, True)],
      out_specs=tile(bq),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      interpret=cfg.interpret,
      compiler_params=params,
      name="bigvl_flash_attention_dq",
  )(q, k, v, *mask_arg, do, m, l, delta)

  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, cfg=cfg),
      grid=(lk // bk, b, h),
      in_specs=[full(lq), tile(bk), tile(bk), *mask_tile, full(lq),
                stats(lq, False), stats(lq, False), stats(lq, False)],
      out_specs=[tile(bk), tile(bk)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=cfg.interpret,
      compiler_params=params,
      name="bigvl_flash_attention_dkdv",
  )(q, k, v, *mask_arg, do, m, l, delta)
  return dq, dk, dv


# ------------------------------------------------------------------------------------------
# custom_vjp over the padded arrays; padding and slicing stay outside, where plain autodiff
# turns the slice of o into a zero-padded cotangent.


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, kv_mask, cfg):
  return forward_call(q, k, v, kv_mask, cfg)[0]


def _flash_fwd(q, k, v, kv_mask, cfg):
  o, m, l = forward_call(q, k, v, kv_mask, cfg)
  return o, (q, k, v, kv_mask, o, m, l)


def _flash_bwd(cfg, res, do):
  q, k, v, kv_mask, o, m, l = res
  dq, dk, dv = backward_call(q, k, v, kv_mask, o, m, l, do, cfg)
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _fit(block: int, length: int, floor: int) -> int:
  """The block actually used: no larger than the length rounded up to a power of two."""
  return max(min(block, pl.next_power_of_2(length)), min(floor, block))


def triton_block_error(blocks: dict[str, int | None]) -> str | None:
  """Why these tiles cannot lower to Triton (whose loads, stores and dots need power-of-two
  tiles of at least 16), or None when they can."""
  bad = {k: v for k, v in blocks.items() if v is not None and (v < 16 or v & (v - 1))}
  if bad:
    return (f"Pallas GPU (Triton) tiles must be powers of two >= 16; got {bad}. "
            "Smaller or odd tiles only work with interpret=True.")
  return None


def check_gpu_blocks(blocks: dict[str, int | None]) -> None:
  """Raises ValueError if the compiled (Triton) kernels cannot take these tiles."""
  message = triton_block_error(blocks)
  if message:
    raise ValueError(message)


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def default_block_sizes(head_dim: int, itemsize: int) -> BlockSizes:
  """The tiles `BlockSizes()` resolves to for this head dim and dtype (see BlockSizes)."""
  d = max(16, pl.next_power_of_2(head_dim))
  return BlockSizes(block_q=128, block_k=_default_block(128, d, itemsize),
                    block_q_bwd=_default_block(64 if d <= 64 else 128, d, itemsize),
                    block_k_bwd=_default_block(64, d, itemsize))


def prepare(q_shape, kv_len: int, *, causal: bool, has_mask: bool,
            block_sizes: BlockSizes | None, interpret: bool,
            num_warps: int | None = None, itemsize: int = 4):
  """Resolves block sizes and padded lengths; returns (cfg, lq_pad, lk_pad, d_pad).

  `interpret`: True for the interpreter (any tile), False for Triton (tiles checked)."""
  _, lq, _, d = q_shape
  bs = BlockSizes(**resolved_blocks(d, itemsize, block_sizes))
  if not interpret:
    check_gpu_blocks(dataclasses.asdict(bs))
  # tl.dot needs tiles of at least 16 on GPU; the interpreter takes anything.
  floor = 1 if interpret else 16
  bq, bq_b = _fit(bs.block_q, lq, floor), _fit(bs.block_q_bwd, lq, floor)
  bk, bk_b = _fit(bs.block_k, kv_len, floor), _fit(bs.block_k_bwd, kv_len, floor)
  lq_pad = _round_up(lq, math.lcm(bq, bq_b))
  lk_pad = _round_up(kv_len, math.lcm(bk, bk_b))
  # Triton tiles are powers of two; zero columns change no dot product.
  d_pad = d if interpret else max(16, pl.next_power_of_2(d))
  cfg = _Config(sm_scale=d ** -0.5, causal=causal, kv_len=kv_len, block_q=bq, block_k=bk,
                block_q_bwd=bq_b, block_k_bwd=bk_b, has_mask=has_mask, interpret=interpret,
                num_warps=num_warps)
  return cfg, lq_pad, lk_pad, d_pad


def _padded_attention(q, k, v, mask, *, causal, block_sizes, interpret, num_warps):
  """Pads to the tiles, runs the kernels (interpreted or Triton), slices back."""
  b, lq, h, d = q.shape
  lk = k.shape[1]
  cfg, lq_pad, lk_pad, d_pad = prepare(q.shape, lk, causal=causal, has_mask=mask is not None,
                                       itemsize=q.dtype.itemsize,
                                       block_sizes=block_sizes, interpret=interpret,
                                       num_warps=num_warps)
  pad_q = ((0, 0), (0, lq_pad - lq), (0, 0), (0, d_pad - d))
  pad_kv = ((0, 0), (0, lk_pad - lk), (0, 0), (0, d_pad - d))
  qp, kp, vp = jnp.pad(q, pad_q), jnp.pad(k, pad_kv), jnp.pad(v, pad_kv)
  kv_mask = None
  if mask is not None:
    kv_mask = jnp.pad(mask.astype(jnp.int32), ((0, 0), (0, lk_pad - lk)))
  o = _flash(qp, kp, vp, kv_mask, cfg)
  return o[:, :lq, :, :d]


def resolved_blocks(head_dim: int, itemsize: int,
                    block_sizes: BlockSizes | None) -> dict[str, int]:
  """The four tiles the kernels use before clipping: given ones, else the defaults."""
  bs = block_sizes or BlockSizes()
  auto = default_block_sizes(head_dim, itemsize)
  return {f: getattr(bs, f) or getattr(auto, f)
          for f in ("block_q", "block_k", "block_q_bwd", "block_k_bwd")}


def check_inputs(kernel: str, q, k, v, mask) -> None:
  """ValueError naming `kernel` unless q is (b, lq, h, d), k and v (b, lk, h, d) of q's dtype,
  and mask None or a (b, lk) key-padding mask."""
  if q.ndim != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or \
     k.shape[2:] != q.shape[2:]:
    raise ValueError(f"{kernel} expects q (b, lq, h, d) and k, v (b, lk, h, d); got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}.")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"{kernel} needs one dtype for q, k, v; got {q.dtype}, {k.dtype}, "
                     f"{v.dtype}.")
  b, lk = q.shape[0], k.shape[1]
  if mask is not None and mask.shape != (b, lk):
    raise ValueError(f"{kernel} takes a key-padding mask of shape (batch, kv_len) = "
                     f"{(b, lk)}; got {mask.shape}. Use impl='xla' for general masks.")


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                    mask: jax.Array | None = None, causal: bool = False,
                    block_sizes: BlockSizes | None = None, interpret: bool | None = None,
                    num_warps: int | None = None) -> jax.Array:
  """Softmax attention through the Pallas kernels; differentiable (custom VJP).

  Args:
    q: (batch, q_len, heads, head_dim), float32 or bfloat16.
    k, v: (batch, kv_len, heads, head_dim), same dtype as q.
    mask: None or a key-padding mask, bool (batch, kv_len), True = attend.
    causal: query i attends to keys j <= i (aligned at the start, as the reference).
    block_sizes: tile sizes (defaults 128 forward, 64 backward); tests use small ones.
    interpret: True = the Pallas interpreter, False = the Triton kernels; None = by the
      platform lowered for: the interpreter on CPU, Triton on CUDA; lowering for TPU is an
      error (use `attention(impl="pallas")`, which runs splash attention there). Tiles
      Triton cannot take fail when lowering for CUDA, not before.
    num_warps: Triton warps per program; None = 4 for head_dim <= 64, else 8.

  Returns:
    (batch, q_len, heads, head_dim) in q's dtype.
  """
  check_inputs("flash_attention", q, k, v, mask)
  b, lq, h, d = q.shape
  lk = k.shape[1]
  run = functools.partial(_padded_attention, causal=causal, block_sizes=block_sizes,
                          num_warps=num_warps)
  if interpret is not None:
    return run(q, k, v, mask, interpret=interpret)
  return platform.by_platform(q, k, v, mask, **gpu_and_cpu_branches(
      run, block_error=triton_block_error(resolved_blocks(d, q.dtype.itemsize, block_sizes))),
      tpu=platform.unsupported(
          "bigvl.kernels.flash_attention is the Triton kernel and has no TPU body; use "
          "bigvl.kernels.attention.attention(impl='pallas'), which runs splash attention on "
          "TPU.", like=_shape_like))


def _shape_like(q, k, v, mask):
  return jax.ShapeDtypeStruct(q.shape, q.dtype)


def gpu_and_cpu_branches(run, *, block_error: str | None) -> dict:
  """The cpu (interpreter) and cuda (Triton, or a lowering error naming the bad tiles)
  branches of `platform.by_platform` for a `run(q, k, v, mask, *, interpret)`."""
  cuda = (functools.partial(run, interpret=False) if block_error is None
          else platform.unsupported(block_error, like=_shape_like))
  return dict(cpu=functools.partial(run, interpret=True), cuda=cuda)
