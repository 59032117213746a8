"""Contrastive image-text losses computed blockwise: SigLIP sigmoid and CLIP softmax.

Each loss has a dense pure-JAX reference (`*_reference`, the definition) and a Pallas
implementation with the same signature that never holds the (n, m) logits: one program
owns `block_rows` rows of one embedding matrix, streams the other matrix in
`block_cols`-row tiles, recomputes each logits tile (contracting the embedding dimension in
`block_d` chunks) and reduces it at once. The custom VJPs recompute the tiles as well.

Every kernel is written "per row of the first matrix": the gradient with respect to the
second matrix is the same kernel with the two matrices swapped, since both losses are
symmetric under (zimg, ztxt) -> (ztxt, zimg) once the per-row and per-column statistics
are swapped too.

The Pallas body follows the platform the program is lowered for (`bigvl.kernels.platform`):
the Triton kernels below on CUDA, the same kernels in the Pallas interpreter on CPU, and the
Mosaic kernels of `bigvl.kernels.contrastive_loss_tpu` on TPU.

Public API (impl: "xla" | "pallas"):
  sigmoid_loss_block(zimg, ztxt, t, b, *, positives)  sum of -log sigmoid(z * logits)
  sigmoid_loss(zimg, ztxt, t, b)                      SigLIP loss (block sum / n)
  softmax_loss(zimg, ztxt, t)                         CLIP symmetric InfoNCE
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from bigvl.kernels import contrastive_loss_tpu, loss_vjp
from bigvl.kernels import platform
from bigvl.kernels.flash_attention import check_gpu_blocks, triton_block_error

IMPLS = ("xla", "pallas")


# ------------------------------------------------------------------------------------------
# Dense references (the definitions; `bigvl.objectives.contrastive` re-exports the losses).


def sigmoid_loss_block_reference(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array,
                                 *, positives: bool) -> jax.Array:
  """Sum over one (image chunk, text chunk) block of the SigLIP pairwise loss.

  Args:
    zimg: (n, d) image embeddings; ztxt: (m, d) text embeddings.
    t, b: scalar temperature and bias (logits = t * zimg @ ztxt.T + b).
    positives: the block holds the positive pairs on its diagonal (i, i) (needs n == m);
      False: every pair is a negative (a text chunk of another device).
  Returns:
    Scalar float32: -sum_ij log sigmoid(z_ij * logit_ij), z = +1 on positives, else -1.
  """
  if positives and zimg.shape[0] != ztxt.shape[0]:
    raise ValueError(f"positives=True needs as many images as texts; got {zimg.shape[0]} "
                     f"and {ztxt.shape[0]}.")
  logits = t * jnp.einsum("id,jd->ij", zimg, ztxt, preferred_element_type=jnp.float32) + b
  n, m = logits.shape
  labels = (2.0 * jnp.eye(n, m, dtype=logits.dtype) - 1.0) if positives else -1.0
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits))


def sigmoid_loss_reference(zimg: jax.Array, ztxt: jax.Array, t: jax.Array,
                           b: jax.Array) -> jax.Array:
  """SigLIP pairwise sigmoid loss.

  Args:
    zimg, ztxt: (n, d); pairs (i, i) are positives, every other (i, j) a negative.
    t, b: scalar temperature and bias (logits = t * zimg @ ztxt.T + b).
  Returns:
    Scalar: -sum_ij log sigmoid(z_ij * logit_ij) / n, z = +1 on the diagonal, -1 elsewhere.
  """
  return sigmoid_loss_block_reference(zimg, ztxt, t, b, positives=True) / zimg.shape[0]


def softmax_loss_reference(zimg: jax.Array, ztxt: jax.Array, t: jax.Array) -> jax.Array:
  """Symmetric InfoNCE (CLIP).

  Args:
    zimg, ztxt: (n, d) embeddings; row i of each is a positive pair.
    t: scalar temperature multiplier (logits = t * zimg @ ztxt.T).
  Returns:
    Scalar: mean of the image->text and text->image cross-entropies.
  """
  logits = t * jnp.einsum("id,jd->ij", zimg, ztxt, preferred_element_type=jnp.float32)
  diag = jnp.diagonal(logits)
  i2t = jax.nn.logsumexp(logits, axis=1) - diag
  t2i = jax.nn.logsumexp(logits, axis=0) - diag
  return 0.5 * (i2t.mean() + t2i.mean())


# ------------------------------------------------------------------------------------------
# Kernels.


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the loss kernels (clipped to the power-of-two rounded problem size).

  block_rows: rows of the first matrix per program; block_cols: rows of the second matrix
  per logits tile; block_d: embedding columns per partial product (a large embedding dim
  would not fit a (block, d) tile in registers).
  """
  block_rows: int = 128
  block_cols: int = 128
  # None: 128 for 16-bit inputs, 64 for 32-bit, so that the double-buffered
  # (128 + 128, block_d) operand tiles take 128 KiB of shared memory (H100/H200 have
  # 227 KiB; 256 in bfloat16 asked for 256 KiB and failed to launch on an H200).
  block_d: int | None = None


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static description of one padded rows-kernel call (hashable)."""
  kind: str            # "sigmoid" | "softmax"
  positives: bool      # Sigmoid: pair (i, i) is positive.
  n_rows: int          # Valid rows / columns; the rest is block padding.
  n_cols: int
  block_rows: int
  block_cols: int
  block_d: int
  interpret: bool


def _dot_nt(a, b):
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a, b):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _tile_logits(x_ref, y_ref, start_c, tb_ref, cfg: _Config):
  """t * x_block @ y[start_c : start_c + block_cols].T + b, contracted in block_d chunks."""
  br, bc, bd = cfg.block_rows, cfg.block_cols, cfg.block_d
  nd = x_ref.shape[1] // bd

  def body(c, acc):
    xs = x_ref[:, pl.ds(c * bd, bd)]
    ys = y_ref[pl.ds(start_c, bc), pl.ds(c * bd, bd)]
    return acc + _dot_nt(xs, ys)

  if nd == 1:
    s = _dot_nt(x_ref[...], y_ref[pl.ds(start_c, bc), :])
  else:
    s = lax.fori_loop(0, nd, body, jnp.zeros((br, bc), jnp.float32))
  return tb_ref[0] * s + tb_ref[1]


def _valid(start_r, start_c, cfg: _Config):
  """(block_rows, block_cols) bool: entries of real rows and columns (not padding)."""
  shape = (cfg.block_rows, cfg.block_cols)
  rows = start_r + lax.broadcasted_iota(jnp.int32, shape, 0)
  cols = start_c + lax.broadcasted_iota(jnp.int32, shape, 1)
  return rows, cols, (rows < cfg.n_rows) & (cols < cfg.n_cols)


def _softplus(u):
  # -log sigmoid(-u), stable for large |u| and built from primitives Triton lowers.
  return jnp.maximum(u, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(u)))


def _sigmoid_signs(rows, cols, cfg: _Config):
  """z_ij: +1 on positive pairs, -1 elsewhere."""
  if cfg.positives:
    return jnp.where(rows == cols, 1.0, -1.0)
  return -1.0


def _fwd_kernel(x_ref, y_ref, tb_ref, out_ref, *, cfg: _Config):
  """Per row: sigmoid -> sum_j -log sigmoid(z l); softmax -> logsumexp_j l."""
  start_r = pl.program_id(0) * cfg.block_rows
  n_col_blocks = y_ref.shape[0] // cfg.block_cols

  def sigmoid_body(j, acc):
    start_c = j * cfg.block_cols
    logits = _tile_logits(x_ref, y_ref, start_c, tb_ref, cfg)
    rows, cols, valid = _valid(start_r, start_c, cfg)
    z = _sigmoid_signs(rows, cols, cfg)
    return acc + jnp.sum(jnp.where(valid, _softplus(-z * logits), 0.0), axis=1)

  def softmax_body(j, carry):
    m_prev, l_prev = carry
    start_c = j * cfg.block_cols
    logits = _tile_logits(x_ref, y_ref, start_c, tb_ref, cfg)
    _, _, valid = _valid(start_r, start_c, cfg)
    # Column padding is -inf; tile 0 always holds column 0, so m is finite after it.
    logits = jnp.where(valid, logits, -jnp.inf)
    m_next = jnp.maximum(m_prev, jnp.max(logits, axis=1))
    # Padded rows are all -inf: keep them finite (their output is discarded).
    m_next = jnp.where(m_next == -jnp.inf, 0.0, m_next)
    l_next = l_prev * jnp.exp(m_prev - m_next) + jnp.sum(jnp.exp(logits - m_next[:, None]), 1)
    return m_next, l_next

  br = cfg.block_rows
  if cfg.kind == "sigmoid":
    out_ref[...] = lax.fori_loop(0, n_col_blocks, sigmoid_body, jnp.zeros((br,), jnp.float32))
  else:
    m, l = lax.fori_loop(0, n_col_blocks, softmax_body,
                         (jnp.full((br,), -jnp.inf, jnp.float32), jnp.zeros((br,), jnp.float32)))
    out_ref[...] = m + jnp.log(jnp.maximum(l, jnp.finfo(jnp.float32).tiny))


def _bwd_kernel(x_ref, y_ref, tb_ref, *rest, cfg: _Config):
  """Per row i: dx_i = sum_j g_ij y_j and gsum_i = sum_j g_ij, g = dloss/dlogits.

  sigmoid: g_ij = -z_ij sigmoid(-z_ij l_ij) (unit cotangent on the sum).
  softmax: g_ij = ct_row_i exp(l_ij - lse_row_i) + ct_col_j exp(l_ij - lse_col_j).
  """
  if cfg.kind == "softmax":
    lse_r_ref, ct_r_ref, lse_c_ref, ct_c_ref, dx_ref, gsum_ref = rest
  else:
    dx_ref, gsum_ref = rest
  br, bc, bd = cfg.block_rows, cfg.block_cols, cfg.block_d
  start_r = pl.program_id(0) * br
  n_col_blocks = y_ref.shape[0] // bc
  nd = x_ref.shape[1] // bd

  def grad_tile(start_c):
    logits = _tile_logits(x_ref, y_ref, start_c, tb_ref, cfg)
    rows, cols, valid = _valid(start_r, start_c, cfg)
    if cfg.kind == "sigmoid":
      z = _sigmoid_signs(rows, cols, cfg)
      g = -z * jax.nn.sigmoid(-z * logits)
    else:
      lse_c = lse_c_ref[pl.ds(start_c, bc)]
      ct_c = ct_c_ref[pl.ds(start_c, bc)]
      g = (ct_r_ref[...][:, None] * jnp.exp(logits - lse_r_ref[...][:, None])
           + ct_c[None, :] * jnp.exp(logits - lse_c[None, :]))
    return jnp.where(valid, g, 0.0)

  if nd == 1:
    # The whole (block_rows, d) accumulator fits in registers.
    def body(j, carry):
      dx, gs = carry
      start_c = j * bc
      g = grad_tile(start_c)
      y = y_ref[pl.ds(start_c, bc), :]
      return dx + _dot(g.astype(y.dtype), y), gs + jnp.sum(g, axis=1)

    dx, gs = lax.fori_loop(0, n_col_blocks, body,
                           (jnp.zeros((br, x_ref.shape[1]), jnp.float32),
                            jnp.zeros((br,), jnp.float32)))
    dx_ref[...] = dx
  else:
    # A wide embedding accumulates in the output block itself, chunk by chunk: this program
    # owns those rows, so the read-modify-writes cannot race.
    def zero(c, _):
      dx_ref[:, pl.ds(c * bd, bd)] = jnp.zeros((br, bd), jnp.float32)
      return 0

    lax.fori_loop(0, nd, zero, 0)

    def body(j, gs):
      start_c = j * bc
      g = grad_tile(start_c)

      def acc(c, _):
        y = y_ref[pl.ds(start_c, bc), pl.ds(c * bd, bd)]
        dx_ref[:, pl.ds(c * bd, bd)] += _dot(g.astype(y.dtype), y)
        return 0

      lax.fori_loop(0, nd, acc, 0)
      return gs + jnp.sum(g, axis=1)

    gs = lax.fori_loop(0, n_col_blocks, body, jnp.zeros((br,), jnp.float32))
  gsum_ref[...] = gs


def _compiler_params(cfg: _Config):
  if cfg.interpret:
    return None
  from jax.experimental.pallas import triton as plgpu
  return plgpu.CompilerParams(num_warps=4 if cfg.block_d <= 64 else 8, num_stages=2)


def forward_call(x, y, tb, cfg: _Config):
  """Rows kernel on padded inputs: x (nr, dp), y (nc, dp), tb = [t, b] float32 (2,).

  Returns (nr,) float32: per-row loss sums (sigmoid) or logsumexps (softmax).
  """
  nr, dp = x.shape
  nc = y.shape[0]
  br = cfg.block_rows
  return pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg),
      grid=(nr // br,),
      in_specs=[pl.BlockSpec((br, dp), lambda i: (i, 0)),
                pl.BlockSpec((nc, dp), lambda i: (0, 0)),
                pl.BlockSpec((2,), lambda i: (0,))],
      out_specs=pl.BlockSpec((br,), lambda i: (i,)),
      out_shape=jax.ShapeDtypeStruct((nr,), jnp.float32),
      interpret=cfg.interpret,
      compiler_params=_compiler_params(cfg),
      name=f"bigvl_{cfg.kind}_loss_fwd",
  )(x, y, tb)


def backward_call(x, y, tb, cfg: _Config, stats=()):
  """Rows gradient kernel on padded inputs (as `forward_call`).

  stats (softmax only): (lse_rows (nr,), ct_rows (nr,), lse_cols (nc,), ct_cols (nc,)).
  Returns dx (nr, dp) float32 = sum_j g_ij y_j (no factor t) and gsum (nr,) = sum_j g_ij.
  """
  nr, dp = x.shape
  nc = y.shape[0]
  br = cfg.block_rows
  stat_specs = []
  if stats:
    stat_specs = [pl.BlockSpec((br,), lambda i: (i,)), pl.BlockSpec((br,), lambda i: (i,)),
                  pl.BlockSpec((nc,), lambda i: (0,)), pl.BlockSpec((nc,), lambda i: (0,))]
  return pl.pallas_call(
      functools.partial(_bwd_kernel, cfg=cfg),
      grid=(nr // br,),
      in_specs=[pl.BlockSpec((br, dp), lambda i: (i, 0)),
                pl.BlockSpec((nc, dp), lambda i: (0, 0)),
                pl.BlockSpec((2,), lambda i: (0,)), *stat_specs],
      out_specs=[pl.BlockSpec((br, dp), lambda i: (i, 0)), pl.BlockSpec((br,), lambda i: (i,))],
      out_shape=[jax.ShapeDtypeStruct((nr, dp), jnp.float32),
                 jax.ShapeDtypeStruct((nr,), jnp.float32)],
      interpret=cfg.interpret,
      compiler_params=_compiler_params(cfg),
      name=f"bigvl_{cfg.kind}_loss_bwd",
  )(x, y, tb, *stats)


# ------------------------------------------------------------------------------------------
# Padding and the custom VJPs.


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _fit(block: int, size: int, floor: int) -> int:
  return max(min(block, pl.next_power_of_2(size)), min(floor, block))


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Padded sizes and the two configs (rows = images, rows = texts) of one loss call."""
  n: int
  m: int
  d: int
  n_pad: int
  m_pad: int
  d_pad: int
  img: _Config
  txt: _Config


def prepare(kind: str, positives: bool, n: int, m: int, d: int,
            block_sizes: BlockSizes | None, interpret: bool,
            itemsize: int = 4) -> _Plan:
  """Block sizes and padded shapes of one loss call on zimg (n, d), ztxt (m, d).

  `kind`: "sigmoid" | "softmax"; `positives`: sigmoid pair (i, i) is positive; `itemsize`:
  bytes per element (picks the default `block_d`); `interpret`: True for the interpreter
  (any tile), False for Triton (tiles checked). Returns a plan with `n_pad`, `m_pad`,
  `d_pad` (the shapes `pad_to` makes) and the kernel configs `img` (rows = images) and `txt`
  (rows = texts) that `forward_call` / `backward_call` take.
  """
  bs = block_sizes or BlockSizes()
  if bs.block_d is None:
    bs = dataclasses.replace(bs, block_d=128 if itemsize <= 2 else 64)
  if not interpret:
    check_gpu_blocks(dataclasses.asdict(bs))
  floor = 1 if interpret else 16      # tl.dot tiles are at least 16 wide.
  br = _fit(bs.block_rows, max(n, m), floor)
  bc = _fit(bs.block_cols, max(n, m), floor)
  # Rows of one matrix are the columns of the other in the swapped (gradient) call.
  blk = math.lcm(br, bc)
  n_pad, m_pad = _round_up(n, blk), _round_up(m, blk)
  bd = _fit(bs.block_d, d, floor)
  d_pad = _round_up(d, bd)            # Zero columns change no dot product.
  common = dict(kind=kind, positives=positives, block_rows=br, block_cols=bc, block_d=bd,
                interpret=interpret)
  return _Plan(n=n, m=m, d=d, n_pad=n_pad, m_pad=m_pad, d_pad=d_pad,
               img=_Config(n_rows=n, n_cols=m, **common),
               txt=_Config(n_rows=m, n_cols=n, **common))


pad_to, scale_bias = loss_vjp.pad_to, loss_vjp.scale_bias
_sigmoid_sum, _lse_pair = loss_vjp.custom_vjps(forward_call, backward_call)


# ------------------------------------------------------------------------------------------
# Public API.


def _check(zimg, ztxt, impl):
  if impl not in IMPLS:
    raise ValueError(f"Unknown loss impl {impl!r}; valid: {IMPLS}.")
  if zimg.ndim != 2 or ztxt.ndim != 2 or zimg.shape[1] != ztxt.shape[1]:
    raise ValueError(f"Expected zimg (n, d) and ztxt (m, d); got {zimg.shape}, {ztxt.shape}.")


def _by_platform(triton_body, tpu_body, args, block_sizes, interpret):
  """The loss body for the lowering platform (interpret None), else the Triton body
  interpreted (True) or compiled (False). Tiles a platform cannot take are an error when
  lowering for it, not when tracing the other platforms' branches."""
  if interpret is not None:
    return triton_body(*args, interpret=interpret)
  scalar = lambda *_: jax.ShapeDtypeStruct((), jnp.float32)
  cuda_error = triton_block_error(dataclasses.asdict(block_sizes or BlockSizes()))
  tpu_error = contrastive_loss_tpu.block_error(block_sizes)
  return platform.by_platform(
      *args,
      cpu=functools.partial(triton_body, interpret=True),
      cuda=(platform.unsupported(cuda_error, like=scalar) if cuda_error
            else functools.partial(triton_body, interpret=False)),
      tpu=(platform.unsupported(tpu_error, like=scalar) if tpu_error
           else functools.partial(tpu_body, block_sizes=block_sizes, interpret=False)))


def _sigmoid_block_triton(zimg, ztxt, t, b, *, positives, block_sizes, interpret):
  plan = prepare("sigmoid", positives, zimg.shape[0], ztxt.shape[0], zimg.shape[1],
                 block_sizes, interpret, itemsize=max(zimg.dtype.itemsize, ztxt.dtype.itemsize))
  return _sigmoid_sum(zimg, ztxt, t, b, plan)


def _softmax_triton(zimg, ztxt, t, *, block_sizes, interpret):
  plan = prepare("softmax", True, zimg.shape[0], ztxt.shape[0], zimg.shape[1], block_sizes,
                 interpret, itemsize=max(zimg.dtype.itemsize, ztxt.dtype.itemsize))
  lse_r, lse_c = _lse_pair(zimg, ztxt, t, plan)
  # The positive logits are O(n d): plain JAX, differentiated by autodiff.
  diag = t * jnp.einsum("id,id->i", zimg, ztxt, preferred_element_type=jnp.float32)
  return 0.5 * (jnp.mean(lse_r - diag) + jnp.mean(lse_c - diag))


def sigmoid_loss_block(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array, *,
                       positives: bool, impl: str = "xla",
                       block_sizes: BlockSizes | None = None,
                       interpret: bool | None = None) -> jax.Array:
  """Sum of the SigLIP pairwise loss over one block; differentiable in all four inputs.

  The chunked cross-device loss calls this once per ring step: `positives=True` for the
  device's own text chunk (positives on the diagonal), False for the others.

  Args:
    zimg: (n, d); ztxt: (m, d) (n == m when positives); t, b: scalars.
    positives: whether pair (i, i) is positive.
    impl: "xla" (dense reference) | "pallas" (blockwise kernel; no (n, m) buffer).
    block_sizes: tiles of impl="pallas" (the TPU body needs block_rows % 8 == 0 and
      block_cols % 128 == 0 and ignores block_d).
    interpret: None = by the platform lowered for (CPU: interpreter, CUDA: Triton, TPU:
      Mosaic); True / False = the Triton body interpreted / compiled, anywhere.
  Returns:
    Scalar float32: -sum_ij log sigmoid(z_ij * (t * <zimg_i, ztxt_j> + b)).
  """
  _check(zimg, ztxt, impl)
  if impl == "xla":
    return sigmoid_loss_block_reference(zimg, ztxt, t, b, positives=positives)
  if positives and zimg.shape[0] != ztxt.shape[0]:
    raise ValueError(f"positives=True needs as many images as texts; got {zimg.shape[0]} "
                     f"and {ztxt.shape[0]}.")
  return _by_platform(functools.partial(_sigmoid_block_triton, positives=positives,
                                       block_sizes=block_sizes),
                      functools.partial(contrastive_loss_tpu.sigmoid_loss_block,
                                        positives=positives),
                      (zimg, ztxt, t, b), block_sizes, interpret)


def sigmoid_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array, *,
                 impl: str = "xla", block_sizes: BlockSizes | None = None,
                 interpret: bool | None = None) -> jax.Array:
  """SigLIP loss of a full batch: `sigmoid_loss_block(positives=True) / n`.

  Args:
    zimg, ztxt: (n, d); pairs (i, i) positive. t, b: scalars.
    impl, block_sizes, interpret: as `sigmoid_loss_block`.
  Returns:
    Scalar float32.
  """
  _check(zimg, ztxt, impl)
  if impl == "xla":
    return sigmoid_loss_reference(zimg, ztxt, t, b)
  return sigmoid_loss_block(zimg, ztxt, t, b, positives=True, impl=impl,
                            block_sizes=block_sizes, interpret=interpret) / zimg.shape[0]


def softmax_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, *, impl: str = "xla",
                 block_sizes: BlockSizes | None = None,
                 interpret: bool | None = None) -> jax.Array:
  """CLIP symmetric InfoNCE; see `softmax_loss_reference`.

  Args:
    zimg, ztxt: (n, d), row i of each a positive pair. t: scalar.
    impl: "xla" | "pallas" (row and column logsumexps blockwise, custom VJP).
    block_sizes, interpret: as `sigmoid_loss_block`.
  Returns:
    Scalar float32.
  """
  _check(zimg, ztxt, impl)
  if impl == "xla":
    return softmax_loss_reference(zimg, ztxt, t)
  if zimg.shape[0] != ztxt.shape[0]:
    raise ValueError(f"softmax_loss needs paired rows; got {zimg.shape[0]} images and "
                     f"{ztxt.shape[0]} texts.")
  return _by_platform(functools.partial(_softmax_triton, block_sizes=block_sizes),
                      contrastive_loss_tpu.softmax_loss, (zimg, ztxt, t), block_sizes, interpret)
