"""The blockwise SigLIP / CLIP losses as Pallas TPU (Mosaic) kernels.

The TPU body beside the Triton one in `bigvl.kernels.contrastive_loss` (which holds the
references, `*_reference`, and dispatches here when lowering for TPU). Same math, the
Mosaic idiom instead of Triton's:

* Grid `(row blocks, column blocks)`, the column axis "arbitrary" (sequential): a program
  sees one `(block_rows, d)` tile of the first matrix and one `(block_cols, d)` tile of the
  second, and adds the reduction of its logits tile into VMEM scratch, written out at the
  last column block. Triton programs loop over the columns themselves instead.
* Mosaic tiles: the last two block dims must be multiples of (8, 128) or whole, so
  `block_rows` is a multiple of 8, `block_cols` of 128 (the column statistics of the
  softmax backward are `(1, block_cols)` rows), the embedding dim is whole (zero-padded to
  a multiple of 128), and per-row outputs are `(n, 1)` columns.
* `t` and `b` are scalar-prefetch operands (SMEM).

As in the Triton body, the gradient with respect to the second matrix is the same kernel
with the matrices swapped, and nothing of size n x m exists.

Public API (as `contrastive_loss` without `impl`): `sigmoid_loss_block`, `sigmoid_loss`,
`softmax_loss`; `interpret=True` (or a `pltpu.InterpretParams`) runs them in the Pallas
interpreter on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from bigvl.kernels import loss_vjp

SUBLANES, LANES = 8, 128
# Tiles when no block sizes are given (those of `contrastive_loss.BlockSizes()`).
DEFAULT_ROWS, DEFAULT_COLS = 128, 128


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static description of one padded rows-kernel call (hashable)."""
  kind: str            # "sigmoid" | "softmax"
  positives: bool
  n_rows: int          # Valid rows / columns; the rest is padding.
  n_cols: int
  block_rows: int
  block_cols: int
  interpret: object    # False, True or a pltpu.InterpretParams.


def _tiles(block_sizes) -> tuple[int, int]:
  if block_sizes is None:
    return DEFAULT_ROWS, DEFAULT_COLS
  return block_sizes.block_rows, block_sizes.block_cols


def block_error(block_sizes) -> str | None:
  """Why Mosaic cannot take these tiles (a `contrastive_loss.BlockSizes`), or None."""
  br, bc = _tiles(block_sizes)
  if br % SUBLANES or bc % LANES:
    return (f"TPU loss tiles need block_rows a multiple of {SUBLANES} and block_cols a "
            f"multiple of {LANES}; got block_rows={br}, block_cols={bc}.")
  return None


def _dot_nt(a, b):
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a, b):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _tile(tb_ref, x_ref, y_ref, cfg: _Config):
  """This program's logits tile and its (rows, cols, valid) index masks."""
  br, bc = cfg.block_rows, cfg.block_cols
  logits = tb_ref[0] * _dot_nt(x_ref[...], y_ref[...]) + tb_ref[1]
  rows = pl.program_id(0) * br + lax.broadcasted_iota(jnp.int32, (br, bc), 0)
  cols = pl.program_id(1) * bc + lax.broadcasted_iota(jnp.int32, (br, bc), 1)
  return logits, rows, cols, (rows < cfg.n_rows) & (cols < cfg.n_cols)


def _signs(rows, cols, cfg: _Config):
  """z_ij: +1 on positive pairs, -1 elsewhere."""
  return jnp.where(rows == cols, 1.0, -1.0) if cfg.positives else -1.0


def _softplus(u):
  # -log sigmoid(-u), stable for large |u|.
  return jnp.maximum(u, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(u)))


def _fwd_kernel(tb_ref, x_ref, y_ref, out_ref, *scratch, cfg: _Config):
  """Per row: sigmoid -> sum_j -log sigmoid(z l); softmax -> logsumexp_j l."""
  j, last = pl.program_id(1), pl.num_programs(1) - 1
  logits, rows, cols, valid = _tile(tb_ref, x_ref, y_ref, cfg)
  if cfg.kind == "sigmoid":
    (acc_ref,) = scratch

    @pl.when(j == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)

    z = _signs(rows, cols, cfg)
    acc_ref[...] += jnp.sum(jnp.where(valid, _softplus(-z * logits), 0.0), axis=1,
                            keepdims=True)

    @pl.when(j == last)
    def _():
      out_ref[...] = acc_ref[...]
  else:
    m_ref, l_ref = scratch

    @pl.when(j == 0)
    def _():
      m_ref[...] = jnp.full_like(m_ref, -jnp.inf)
      l_ref[...] = jnp.zeros_like(l_ref)

    # Column padding is -inf; column block 0 holds column 0, so m is finite after it.
    logits = jnp.where(valid, logits, -jnp.inf)
    m_prev = m_ref[...]
    m_next = jnp.maximum(m_prev, jnp.max(logits, axis=1, keepdims=True))
    # Padding rows are all -inf: keep them finite (their output is discarded).
    m_next = jnp.where(m_next == -jnp.inf, 0.0, m_next)
    l_ref[...] = (l_ref[...] * jnp.exp(m_prev - m_next)
                  + jnp.sum(jnp.exp(logits - m_next), axis=1, keepdims=True))
    m_ref[...] = m_next

    @pl.when(j == last)
    def _():
      out_ref[...] = m_ref[...] + jnp.log(jnp.maximum(l_ref[...],
                                                      jnp.finfo(jnp.float32).tiny))


def _bwd_kernel(tb_ref, x_ref, y_ref, *rest, cfg: _Config):
  """Per row i: dx_i = sum_j g_ij y_j and gsum_i = sum_j g_ij, g = dloss/dlogits.

  sigmoid: g_ij = -z_ij sigmoid(-z_ij l_ij); softmax: g_ij = ct_row_i exp(l_ij - lse_row_i)
  + ct_col_j exp(l_ij - lse_col_j).
  """
  if cfg.kind == "softmax":
    lse_r_ref, ct_r_ref, lse_c_ref, ct_c_ref, dx_ref, gsum_ref, dx_acc, gs_acc = rest
  else:
    dx_ref, gsum_ref, dx_acc, gs_acc = rest
  j, last = pl.program_id(1), pl.num_programs(1) - 1

  @pl.when(j == 0)
  def _():
    dx_acc[...] = jnp.zeros_like(dx_acc)
    gs_acc[...] = jnp.zeros_like(gs_acc)

  logits, rows, cols, valid = _tile(tb_ref, x_ref, y_ref, cfg)
  if cfg.kind == "sigmoid":
    z = _signs(rows, cols, cfg)
    g = -z * jax.nn.sigmoid(-z * logits)
  else:
    g = (ct_r_ref[...] * jnp.exp(logits - lse_r_ref[...])
         + ct_c_ref[...] * jnp.exp(logits - lse_c_ref[...]))
  g = jnp.where(valid, g, 0.0)
  y = y_ref[...]
  dx_acc[...] += _dot(g.astype(y.dtype), y)
  gs_acc[...] += jnp.sum(g, axis=1, keepdims=True)

  @pl.when(j == last)
  def _():
    dx_ref[...] = dx_acc[...]
    gsum_ref[...] = gs_acc[...]


def _call(kernel, x, y, tb, cfg: _Config, stats, out_cols: list[int], scratch_cols: list[int],
          name: str):
  """One pallas_call over the (row, column) block grid; outputs are (nr, c) float32."""
  nr, dp = x.shape
  nc = y.shape[0]
  br, bc = cfg.block_rows, cfg.block_cols
  row = lambda c: pl.BlockSpec((br, c), lambda i, j, tb: (i, 0))
  col = pl.BlockSpec((1, bc), lambda i, j, tb: (0, j))
  in_specs = [row(dp), pl.BlockSpec((bc, dp), lambda i, j, tb: (j, 0))]
  if stats:
    in_specs += [row(1), row(1), col, col]
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1,
      grid=(nr // br, nc // bc),
      in_specs=in_specs,
      out_specs=[row(c) for c in out_cols],
      scratch_shapes=[pltpu.VMEM((br, c), jnp.float32) for c in scratch_cols])
  return pl.pallas_call(
      functools.partial(kernel, cfg=cfg),
      grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct((nr, c), jnp.float32) for c in out_cols],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
      interpret=cfg.interpret,
      name=name,
  )(tb, x, y, *stats)


def forward_call(x, y, tb, cfg: _Config):
  """Rows kernel on padded inputs x (nr, dp), y (nc, dp), tb = [t, b] (2,) float32.

  Returns (nr,) float32: per-row loss sums (sigmoid) or logsumexps (softmax).
  """
  scratch = [1] if cfg.kind == "sigmoid" else [1, 1]
  (out,) = _call(_fwd_kernel, x, y, tb, cfg, (), [1], scratch, f"bigvl_{cfg.kind}_loss_fwd_tpu")
  return out[:, 0]


def backward_call(x, y, tb, cfg: _Config, stats=()):
  """Rows gradient kernel on padded inputs (as `forward_call`).

  stats (softmax only): (lse_rows (nr,), ct_rows (nr,), lse_cols (nc,), ct_cols (nc,)).
  Returns dx (nr, dp) float32 = sum_j g_ij y_j (no factor t) and gsum (nr,) = sum_j g_ij.
  """
  dp = x.shape[1]
  if stats:
    lse_r, ct_r, lse_c, ct_c = stats
    stats = (lse_r[:, None], ct_r[:, None], lse_c[None, :], ct_c[None, :])
  dx, gsum = _call(_bwd_kernel, x, y, tb, cfg, stats, [dp, 1], [dp, 1],
                   f"bigvl_{cfg.kind}_loss_bwd_tpu")
  return dx, gsum[:, 0]


# ------------------------------------------------------------------------------------------
# Padding and the custom VJPs.


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


@dataclasses.dataclass(frozen=True)
class _Plan:
  n: int
  m: int
  n_pad: int
  m_pad: int
  d_pad: int
  img: _Config
  txt: _Config


def prepare(kind: str, positives: bool, n: int, m: int, d: int, block_sizes,
            interpret) -> _Plan:
  """Tiles and padded shapes of one loss call on zimg (n, d), ztxt (m, d)."""
  message = block_error(block_sizes)
  if message:
    raise ValueError(message)
  br, bc = _tiles(block_sizes)
  # Rows of one matrix are the columns of the other in the swapped (gradient) call.
  blk = math.lcm(br, bc)
  common = dict(kind=kind, positives=positives, block_rows=br, block_cols=bc,
                interpret=interpret)
  return _Plan(n=n, m=m, n_pad=_round_up(n, blk), m_pad=_round_up(m, blk),
               d_pad=_round_up(d, LANES),
               img=_Config(n_rows=n, n_cols=m, **common), txt=_Config(n_rows=m, n_cols=n, **common))


_sigmoid_sum, _lse_pair = loss_vjp.custom_vjps(forward_call, backward_call)


# ------------------------------------------------------------------------------------------
# Public API.


def sigmoid_loss_block(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array, *,
                       positives: bool, block_sizes=None, interpret=False) -> jax.Array:
  """Sum of the SigLIP pairwise loss over one block (see `contrastive_loss`).

  Args:
    zimg: (n, d); ztxt: (m, d) (n == m when positives); t, b: scalars.
    positives: whether pair (i, i) is positive.
    block_sizes: a `contrastive_loss.BlockSizes` (block_rows a multiple of 8, block_cols of
      128; block_d is unused: the embedding dim is whole); None = 128 x 128.
    interpret: False = Mosaic; True or a `pltpu.InterpretParams` = interpreter.
  Returns:
    Scalar float32: -sum_ij log sigmoid(z_ij * (t * <zimg_i, ztxt_j> + b)).
  """
  if positives and zimg.shape[0] != ztxt.shape[0]:
    raise ValueError(f"positives=True needs as many images as texts; got {zimg.shape[0]} "
                     f"and {ztxt.shape[0]}.")
  plan = prepare("sigmoid", positives, zimg.shape[0], ztxt.shape[0], zimg.shape[1],
                 block_sizes, interpret)
  return _sigmoid_sum(zimg, ztxt, t, b, plan)


def sigmoid_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array, *,
                 block_sizes=None, interpret=False) -> jax.Array:
  """SigLIP loss of a full batch, zimg, ztxt (n, d): `sigmoid_loss_block(positives=True) / n`."""
  return sigmoid_loss_block(zimg, ztxt, t, b, positives=True, block_sizes=block_sizes,
                            interpret=interpret) / zimg.shape[0]


def softmax_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, *, block_sizes=None,
                 interpret=False) -> jax.Array:
  """CLIP symmetric InfoNCE of zimg, ztxt (n, d) (rows paired); scalar float32."""
  if zimg.shape[0] != ztxt.shape[0]:
    raise ValueError(f"softmax_loss needs paired rows; got {zimg.shape[0]} images and "
                     f"{ztxt.shape[0]} texts.")
  plan = prepare("softmax", True, zimg.shape[0], ztxt.shape[0], zimg.shape[1], block_sizes,
                 interpret)
  lse_r, lse_c = _lse_pair(zimg, ztxt, t, plan)
  diag = t * jnp.einsum("id,id->i", zimg, ztxt, preferred_element_type=jnp.float32)
  return 0.5 * (jnp.mean(lse_r - diag) + jnp.mean(lse_c - diag))
