"""The TPU kernel path, checked on a CPU machine.

* Splash attention (`bigvl.kernels.splash_attention`, run in the Pallas interpreter) and
  the Mosaic loss kernels (`bigvl.kernels.contrastive_loss_tpu`, TPU interpret mode)
  against the references: values and all gradients, float32 within 1e-5, bf16 within 2e-2
  relative to the exact (float32) answer; odd lengths, causal, key padding (rows with no
  visible key included), segment ids, n not a multiple of the block.
* Dispatch by the lowering platform: `jax.export(..., platforms=["tpu"])` of
  `attention(impl="pallas" | "auto")` and of each loss (forward and gradient) holds the
  Mosaic custom call and no Triton one; `impl="auto"` lowers for CPU with no kernel at all.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.experimental.pallas import tpu as pltpu

from bigvl.kernels import attention as attention_lib
from bigvl.kernels import contrastive_loss as cl
from bigvl.kernels import contrastive_loss_tpu as cl_tpu
from bigvl.kernels import flash_attention as fa
from bigvl.kernels import splash_attention as sa

pytestmark = pytest.mark.unit

MOSAIC = "tpu_custom_call"
TRITON = "__gpu$xla.gpu.triton"
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
NAMES = ("out", "dq", "dk", "dv")


def _inputs(seed, b, lq, lk, h, d, dtype, masked):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
  q, k, v, do = normal(b, lq, h, d), normal(b, lk, h, d), normal(b, lk, h, d), normal(b, lq, h, d)
  mask = np.asarray(rng.random((b, lk)) < 0.7) if masked else None
  return q, k, v, do, mask


def _out_and_grads(fn, q, k, v, do, mask, ids=None):
  def run(q, k, v, do, mask, ids):
    o, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask, ids), q, k, v)
    return (o, *vjp(do))
  args = (q, k, v, do, mask, ids)
  return jax.jit(run).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def _splash(causal):
  return lambda q, k, v, mask, ids: sa.splash_attention(q, k, v, mask=mask, causal=causal,
                                                        segment_ids=ids, interpret=True)


def _reference(causal):
  return lambda q, k, v, mask, ids: attention_lib.attention_reference(
      q, k, v, mask=mask, causal=causal, segment_ids=ids)


# (batch, q_len, kv_len, heads, head_dim, causal, key-padding mask)
CASES = [
    (2, 7, 7, 2, 16, False, False),      # Shorter than one 128 tile.
    (2, 33, 130, 2, 16, False, True),    # Cross attention, kv spans two tiles, padded keys.
    (2, 130, 33, 1, 8, True, False),     # Causal with q_len > kv_len.
    (2, 33, 33, 2, 64, True, True),      # Causal + padding: rows with no visible key.
]


@pytest.mark.parametrize("b,lq,lk,h,d,causal,masked", CASES)
def test_splash_float32_matches_reference(b, lq, lk, h, d, causal, masked):
  q, k, v, do, mask = _inputs(lq * 1000 + lk, b, lq, lk, h, d, jnp.float32, masked)
  if masked:
    mask[0, 0] = False     # With causal: query 0 of example 0 sees no key.
    mask[1, :] = False     # Example 1 sees no key at all.
  got = _out_and_grads(_splash(causal), q, k, v, do, mask)
  want = _out_and_grads(_reference(causal), q, k, v, do, mask)
  for name, g, w in zip(NAMES, got, want):
    assert g.shape == w.shape and g.dtype == w.dtype, name
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5,
                               err_msg=name)


def test_splash_segment_ids_match_reference():
  """Packed sequences: two segments per example, causal, plus a padded key."""
  b, l, h, d = 2, 40, 2, 16
  q, k, v, do, _ = _inputs(5, b, l, l, h, d, jnp.float32, False)
  ids = np.zeros((b, l), np.int32)
  ids[0, 17:] = 1
  ids[1, 30:] = 3
  mask = np.ones((b, l), bool)
  mask[1, 35:] = False
  ids = (jnp.asarray(ids), jnp.asarray(ids))
  got = _out_and_grads(_splash(True), q, k, v, do, mask, ids)
  want = _out_and_grads(_reference(True), q, k, v, do, mask, ids)
  for name, g, w in zip(NAMES, got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5,
                               err_msg=name)


def test_first_visible_key():
  q_ids = jnp.asarray([0, 0, 1, 2, 5], jnp.int32)
  kv_ids = jnp.asarray([sa.HIDDEN, 0, 1, 1, sa.HIDDEN, 2], jnp.int32)
  np.testing.assert_array_equal(np.asarray(sa.first_visible_key(q_ids, kv_ids)),
                                [1, 1, 2, 5, 6])


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_splash_bfloat16_within_2e2_relative():
  q, k, v, do, mask = _inputs(7, 2, 33, 65, 2, 64, jnp.bfloat16, True)
  got = _out_and_grads(_splash(True), q, k, v, do, mask)
  f32 = lambda x: x.astype(jnp.float32)
  want = _out_and_grads(_reference(True), f32(q), f32(k), f32(v), f32(do), mask)
  for name, g, w in zip(NAMES, got, want):
    assert g.dtype == jnp.bfloat16, name
    assert _rel_err(f32(g), w) < 2e-2, (name, _rel_err(f32(g), w))


def test_splash_rejects_tiles_mosaic_cannot_hold():
  q = jnp.zeros((1, 8, 1, 16), jnp.float32)
  with pytest.raises(ValueError, match="multiples of 128"):
    sa.splash_attention(q, q, q, block_sizes=fa.BlockSizes(8, 8, 8, 8), interpret=True)
  assert sa.padded_lengths(7, 577) == (128, 640)
  assert sa.default_block(4096) == 512 and sa.default_block(196) == 256


# ------------------------------------------------------------------------------------------
# The Mosaic loss kernels in TPU interpret mode.


def _embeddings(seed, n, m, d, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  zimg = unit(rng.standard_normal((n, d)).astype(np.float32))
  ztxt = unit(rng.standard_normal((m, d)).astype(np.float32))
  k = min(n, m)
  ztxt[:k] = unit(ztxt[:k] + 2.0 * zimg[:k])
  return jnp.asarray(zimg, dtype), jnp.asarray(ztxt, dtype)


def _value_and_grads(fn, *args):
  f = jax.value_and_grad(fn, argnums=tuple(range(len(args))))
  return jax.jit(f).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def _assert_close(got, want, tol=1e-5):
  (gv, gg), (wv, wg) = got, want
  np.testing.assert_allclose(float(gv), float(wv), rtol=tol, atol=tol, err_msg="loss")
  for name, g, w in zip(("zimg", "ztxt", "t", "b"), gg, wg):
    assert g.shape == w.shape and g.dtype == w.dtype, name
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol, atol=tol, err_msg=name)


T, B = jnp.float32(10.0), jnp.float32(-4.0)
# TPU interpret mode: the TPU semantics (scalar prefetch, VMEM scratch, grid order).
INTERPRET = pltpu.InterpretParams()
BLOCKS = cl.BlockSizes(block_rows=64, block_cols=128)


@pytest.mark.parametrize("n,d", [(150, 40), (5, 3)])
def test_tpu_sigmoid_loss_matches_dense(n, d):
  zimg, ztxt = _embeddings(n, n, n, d)
  got = _value_and_grads(lambda x, y, t, b: cl_tpu.sigmoid_loss(
      x, y, t, b, block_sizes=BLOCKS, interpret=INTERPRET), zimg, ztxt, T, B)
  want = _value_and_grads(cl.sigmoid_loss_reference, zimg, ztxt, T, B)
  _assert_close(got, want)


@pytest.mark.parametrize("n,d", [(150, 40)])
def test_tpu_softmax_loss_matches_dense(n, d):
  zimg, ztxt = _embeddings(n + 1, n, n, d)
  got = _value_and_grads(lambda x, y, t, b: cl_tpu.softmax_loss(
      x, y, t, block_sizes=BLOCKS, interpret=INTERPRET), zimg, ztxt, T, B)
  want = _value_and_grads(lambda x, y, t, b: cl.softmax_loss_reference(x, y, t),
                          zimg, ztxt, T, B)
  _assert_close(got, want)


def test_tpu_sigmoid_block_without_positives_matches_dense():
  zimg, ztxt = _embeddings(3, 70, 140, 16)
  got = _value_and_grads(lambda x, y, t, b: cl_tpu.sigmoid_loss_block(
      x, y, t, b, positives=False, block_sizes=BLOCKS, interpret=INTERPRET), zimg, ztxt, T, B)
  want = _value_and_grads(lambda x, y, t, b: cl.sigmoid_loss_block_reference(
      x, y, t, b, positives=False), zimg, ztxt, T, B)
  scale = float(want[0])
  _assert_close(jax.tree.map(lambda x: x / scale, got), jax.tree.map(lambda x: x / scale, want))


def test_tpu_loss_rejects_tiles_mosaic_cannot_hold():
  z = jnp.zeros((8, 16), jnp.float32)
  with pytest.raises(ValueError, match="multiple of 128"):
    cl_tpu.sigmoid_loss(z, z, 1.0, 0.0, block_sizes=cl.BlockSizes(8, 64), interpret=True)


# ------------------------------------------------------------------------------------------
# Lowering for TPU from this CPU host.


def _module(fn, platform, *specs) -> str:
  checks = [export.DisabledSafetyCheck.custom_call(TRITON)] if platform == "cuda" else []
  return export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(
      *specs).mlir_module()


def _attention_fwd_bwd(impl, causal, masked):
  def fwd_bwd(q, k, v, mask):
    def f(q, k, v):
      return attention_lib.attention(q, k, v, mask=mask if masked else None, causal=causal,
                                     impl=impl)
    o, vjp = jax.vjp(f, q, k, v)
    return o, vjp(o)
  return fwd_bwd


@pytest.mark.parametrize("dtype,causal,masked", [(jnp.bfloat16, True, True),
                                                 (jnp.float32, False, False)])
def test_attention_pallas_lowers_to_splash_on_tpu_and_triton_on_cuda(dtype, causal, masked):
  qs = jax.ShapeDtypeStruct((2, 200, 3, 64), dtype)
  ms = jax.ShapeDtypeStruct((2, 200), jnp.bool_)
  fn = _attention_fwd_bwd("pallas", causal, masked)
  tpu = _module(fn, "tpu", qs, qs, qs, ms)
  assert tpu.count(MOSAIC) == 3 and TRITON not in tpu   # Forward, dq, dkv.
  cuda = _module(fn, "cuda", qs, qs, qs, ms)
  assert cuda.count(TRITON) == 3 and MOSAIC not in cuda
  cpu = jax.jit(fn).lower(qs, qs, qs, ms).as_text()
  assert MOSAIC not in cpu and TRITON not in cpu          # The interpreter: plain HLO.


def test_auto_picks_xla_on_cpu_and_splash_on_tpu():
  qs = jax.ShapeDtypeStruct((2, 20, 2, 16), jnp.float32)
  ms = jax.ShapeDtypeStruct((2, 20), jnp.bool_)
  fn = _attention_fwd_bwd("auto", True, True)
  cpu = jax.jit(fn).lower(qs, qs, qs, ms).as_text()
  # The XLA reference: its (b, h, q, k) logits, and no kernel (the interpreter would loop).
  assert "tensor<2x2x20x20xf32>" in cpu and "while" not in cpu and "custom_call" not in cpu
  assert _module(fn, "tpu", qs, qs, qs, ms).count(MOSAIC) == 3
  # No cuDNN on this host (and float32): the Triton kernels.
  assert _module(fn, "cuda", qs, qs, qs, ms).count(TRITON) == 3


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_losses_lower_to_mosaic_on_tpu(kind):
  zs = jax.ShapeDtypeStruct((300, 96), jnp.bfloat16)
  ss = jax.ShapeDtypeStruct((), jnp.float32)

  def loss(x, y, t, b):
    if kind == "sigmoid":
      return cl.sigmoid_loss(x, y, t, b, impl="pallas")
    return cl.softmax_loss(x, y, t, impl="pallas")

  fwd = _module(loss, "tpu", zs, zs, ss, ss)
  assert fwd.count(MOSAIC) == (1 if kind == "sigmoid" else 2) and TRITON not in fwd
  both = _module(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), "tpu", zs, zs, ss, ss)
  assert both.count(MOSAIC) == (3 if kind == "sigmoid" else 4)
  assert f'bigvl_{kind}_loss_bwd_tpu' in both
  block = _module(lambda x, y, t, b: cl.sigmoid_loss_block(x, y[:200], t, b, positives=False,
                                                           impl="pallas"), "tpu", zs, zs, ss, ss)
  assert block.count(MOSAIC) == 1


def test_tiles_a_platform_cannot_take_fail_only_when_lowering_for_it():
  """Small interpreter tiles trace and run on CPU; lowering them for TPU names the tiles."""
  zimg, ztxt = _embeddings(1, 20, 20, 8)
  small = cl.BlockSizes(block_rows=8, block_cols=8, block_d=8)
  loss = lambda x, y, t, b: cl.sigmoid_loss(x, y, t, b, impl="pallas", block_sizes=small)
  np.testing.assert_allclose(float(jax.jit(loss)(zimg, ztxt, T, B)),
                             float(cl.sigmoid_loss_reference(zimg, ztxt, T, B)), rtol=1e-5)
  with pytest.raises(ValueError, match="multiple of 128"):
    _module(loss, "tpu", zimg, ztxt, T, B)
  q = jax.ShapeDtypeStruct((1, 8, 1, 16), jnp.float32)
  attn = lambda q: attention_lib.attention(q, q, q, impl="pallas",
                                           block_sizes=fa.BlockSizes(8, 8, 8, 8))
  with pytest.raises(ValueError, match="multiples of 128"):
    _module(attn, "tpu", q)
  with pytest.raises(ValueError, match="powers of two"):
    _module(attn, "cuda", q)
  with pytest.raises(ValueError, match="no TPU body"):
    _module(lambda q: fa.flash_attention(q, q, q), "tpu", q)
  ids = (jnp.zeros((1, 8), jnp.int32),) * 2
  with pytest.raises(ValueError, match="segment_ids"):
    jax.jit(lambda q: attention_lib.attention(q, q, q, impl="pallas", segment_ids=ids)).lower(
        q).compile()
