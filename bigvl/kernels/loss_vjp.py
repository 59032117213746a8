"""The custom VJPs of the blockwise contrastive losses, over any backend's kernel calls.

`bigvl.kernels.contrastive_loss` (Triton / interpreter) and
`bigvl.kernels.contrastive_loss_tpu` (Mosaic) differ only in their kernels; the padding, the
scalar operand and the assembly of the gradients from the per-row kernel outputs are the same
and live here once.

A backend supplies `forward_call(x, y, tb, cfg) -> per-row (n_pad,)` (sigmoid: row sums of the
loss; softmax: row logsumexps) and `backward_call(x, y, tb, cfg, stats=()) -> (dx (n_pad,
d_pad) float32, per-row gradient sums)`, and a plan with `n, m, n_pad, m_pad, d_pad` and the
kernel configs `img` (rows = images) and `txt` (rows = texts).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def pad_to(z, rows: int, cols: int):
  """z (r, c) zero-padded to (rows, cols), the kernels' block-padded input."""
  return jnp.pad(z, ((0, rows - z.shape[0]), (0, cols - z.shape[1])))


def scale_bias(t, b):
  """Scalars t, b -> [t, b] float32 (2,): the `tb` operand of the kernels."""
  return jnp.stack([jnp.asarray(t, jnp.float32).reshape(()),
                    jnp.asarray(b, jnp.float32).reshape(())])


def custom_vjps(forward_call, backward_call):
  """(sigmoid_sum, lse_pair) over one backend's kernels.

  sigmoid_sum(zimg (n, d), ztxt (m, d), t, b, plan) -> scalar: the summed sigmoid loss.
  lse_pair(zimg, ztxt, t, plan) -> (row logsumexp (n,), column logsumexp (m,)) of t * zimg @
  ztxt.T. `plan` is static (a non-differentiable argument).
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
  def _sigmoid_sum(zimg, ztxt, t, b, plan):
    x, y = pad_to(zimg, plan.n_pad, plan.d_pad), pad_to(ztxt, plan.m_pad, plan.d_pad)
    return jnp.sum(forward_call(x, y, scale_bias(t, b), plan.img))

  def _sigmoid_sum_fwd(zimg, ztxt, t, b, plan):
    return _sigmoid_sum(zimg, ztxt, t, b, plan), (zimg, ztxt, t, b)

  def _sigmoid_sum_bwd(plan, res, ct):
    zimg, ztxt, t, b = res
    x, y = pad_to(zimg, plan.n_pad, plan.d_pad), pad_to(ztxt, plan.m_pad, plan.d_pad)
    tb = scale_bias(t, b)
    dx, gsum = backward_call(x, y, tb, plan.img)
    dy, _ = backward_call(y, x, tb, plan.txt)
    dx, dy = dx[:plan.n, :zimg.shape[1]], dy[:plan.m, :ztxt.shape[1]]
    tf = jnp.asarray(t, jnp.float32)
    # dL/dt = sum_ij g_ij <x_i, y_j> = sum_i <x_i, sum_j g_ij y_j>.
    dt = ct * jnp.sum(zimg.astype(jnp.float32) * dx)
    db = ct * jnp.sum(gsum)
    return ((ct * tf * dx).astype(zimg.dtype), (ct * tf * dy).astype(ztxt.dtype),
            dt.astype(jnp.result_type(t)).reshape(jnp.shape(t)),
            db.astype(jnp.result_type(b)).reshape(jnp.shape(b)))

  _sigmoid_sum.defvjp(_sigmoid_sum_fwd, _sigmoid_sum_bwd)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
  def _lse_pair(zimg, ztxt, t, plan):
    x, y = pad_to(zimg, plan.n_pad, plan.d_pad), pad_to(ztxt, plan.m_pad, plan.d_pad)
    tb = scale_bias(t, 0.0)
    return (forward_call(x, y, tb, plan.img)[:plan.n],
            forward_call(y, x, tb, plan.txt)[:plan.m])

  def _lse_pair_fwd(zimg, ztxt, t, plan):
    lse_r, lse_c = _lse_pair(zimg, ztxt, t, plan)
    return (lse_r, lse_c), (zimg, ztxt, t, lse_r, lse_c)

  def _lse_pair_bwd(plan, res, cts):
    zimg, ztxt, t, lse_r, lse_c = res
    ct_r, ct_c = cts
    x, y = pad_to(zimg, plan.n_pad, plan.d_pad), pad_to(ztxt, plan.m_pad, plan.d_pad)
    tb = scale_bias(t, 0.0)
    pad_n = lambda v: jnp.pad(v.astype(jnp.float32), (0, plan.n_pad - plan.n))
    pad_m = lambda v: jnp.pad(v.astype(jnp.float32), (0, plan.m_pad - plan.m))
    r = (pad_n(lse_r), pad_n(ct_r))
    c = (pad_m(lse_c), pad_m(ct_c))
    dx, _ = backward_call(x, y, tb, plan.img, stats=r + c)
    dy, _ = backward_call(y, x, tb, plan.txt, stats=c + r)
    dx, dy = dx[:plan.n, :zimg.shape[1]], dy[:plan.m, :ztxt.shape[1]]
    tf = jnp.asarray(t, jnp.float32)
    dt = jnp.sum(zimg.astype(jnp.float32) * dx)
    return ((tf * dx).astype(zimg.dtype), (tf * dy).astype(ztxt.dtype),
            dt.astype(jnp.result_type(t)).reshape(jnp.shape(t)))

  _lse_pair.defvjp(_lse_pair_fwd, _lse_pair_bwd)

  return _sigmoid_sum, _lse_pair
