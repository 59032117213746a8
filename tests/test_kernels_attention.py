"""Flash attention (Pallas, interpret mode on CPU) against the jnp reference.

Forward output and all three input gradients are compared over odd lengths, cross
attention, causal masking, key padding (including rows with no visible key), several
block sizes, float32 and bfloat16. Small blocks keep the interpreter fast and make even
short sequences span several tiles.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from bigvl.kernels import attention as attention_lib
from bigvl.kernels import flash_attention as fa

pytestmark = pytest.mark.unit

SMALL = fa.BlockSizes(block_q=8, block_k=16, block_q_bwd=16, block_k_bwd=8)


def _inputs(seed, b, lq, lk, h, d, dtype, masked):
  # NumPy, not jax.random: eager jax ops each compile, which would dominate these tests.
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
  q, k, v, do = normal(b, lq, h, d), normal(b, lk, h, d), normal(b, lk, h, d), normal(b, lq, h, d)
  mask = jnp.asarray(rng.random((b, lk)) < 0.7) if masked else None
  return q, k, v, do, mask


# Correctness, not XLA's code quality, is under test: skipping LLVM's expensive passes
# halves the compile time of the interpreted kernels (and of the reference alike).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _out_and_grads(q, k, v, do, mask, *, impl, causal, blocks=SMALL):
  """(out, dq, dk, dv) of `attention` with cotangent `do`."""
  def run(q, k, v, do, mask):
    def fn(q, k, v):
      return attention_lib.attention(q, k, v, mask=mask, causal=causal, impl=impl,
                                     block_sizes=blocks)
    o, vjp = jax.vjp(fn, q, k, v)
    return (o, *vjp(do))
  args = (q, k, v, do, mask)
  return jax.jit(run).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


NAMES = ("out", "dq", "dk", "dv")

# (batch, q_len, kv_len, heads, head_dim, causal, key-padding mask)
CASES = [
    (2, 7, 7, 2, 16, False, False),
    (1, 1, 1, 1, 8, True, True),        # A single token.
    (2, 33, 130, 2, 16, False, True),   # Cross attention, kv much longer, padded keys.
    (2, 130, 33, 1, 8, True, False),    # Causal with q_len > kv_len.
    (2, 33, 33, 2, 64, True, True),     # Causal + padding: rows with no visible key.
    (1, 17, 20, 1, 128, False, True),   # Head dim 128.
]


def _random_cases(n, seed=0):
  """Shapes drawn at random (fixed seed): odd lengths, head dims, masks."""
  rng = np.random.default_rng(seed)
  return [(int(rng.integers(1, 3)), int(rng.integers(1, 70)), int(rng.integers(1, 70)),
           int(rng.integers(1, 3)), int(rng.choice([4, 12, 32])), bool(rng.integers(2)),
           bool(rng.integers(2))) for _ in range(n)]


@pytest.mark.parametrize("b,lq,lk,h,d,causal,masked", CASES + _random_cases(2))
def test_float32_matches_reference(b, lq, lk, h, d, causal, masked):
  q, k, v, do, mask = _inputs(lq * 1000 + lk, b, lq, lk, h, d, jnp.float32, masked)
  if masked and causal:
    mask = np.array(mask)
    mask[0, 0] = False  # Query 0 of batch 0 then sees no key at all.
  got = _out_and_grads(q, k, v, do, mask, impl="pallas", causal=causal)
  want = _out_and_grads(q, k, v, do, mask, impl="xla", causal=causal)
  for name, g, w in zip(NAMES, got, want):
    assert g.shape == w.shape and g.dtype == w.dtype, name
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5,
                               err_msg=name)


# The default BlockSizes run in tests/test_pallas_train_step.py.
@pytest.mark.parametrize("blocks", [fa.BlockSizes(4, 4, 4, 4), fa.BlockSizes(32, 8, 8, 32)])
def test_block_sizes_do_not_change_the_result(blocks):
  q, k, v, do, mask = _inputs(3, 1, 45, 45, 2, 16, jnp.float32, True)
  got = _out_and_grads(q, k, v, do, mask, impl="pallas", causal=True, blocks=blocks)
  want = _out_and_grads(q, k, v, do, mask, impl="xla", causal=True)
  for name, g, w in zip(NAMES, got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5,
                               err_msg=name)


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("lq,lk,d,causal,masked", [(33, 65, 64, True, True),
                                                   (40, 24, 128, False, True)])
def test_bfloat16_within_2e2_relative(lq, lk, d, causal, masked):
  q, k, v, do, mask = _inputs(7, 2, lq, lk, 2, d, jnp.bfloat16, masked)
  got = _out_and_grads(q, k, v, do, mask, impl="pallas", causal=causal)
  # The exact answer for these (bf16-rounded) inputs: the float32 reference.
  f32 = lambda x: x.astype(jnp.float32)
  want = _out_and_grads(f32(q), f32(k), f32(v), f32(do), mask, impl="xla", causal=causal)
  bf16_ref = _out_and_grads(q, k, v, do, mask, impl="xla", causal=causal)
  for name, g, w, r in zip(NAMES, got, want, bf16_ref):
    assert g.dtype == jnp.bfloat16, name
    err = _rel_err(f32(g), w)
    assert err < 2e-2, (name, err)
    # And no worse than the XLA path in the same precision (with slack for rounding luck).
    assert err < 2 * _rel_err(f32(r), w) + 1e-3, (name, err, _rel_err(f32(r), w))


def test_interpreter_poisons_unwritten_outputs():
  """The canary for the write-coverage test below: an unwritten output element is NaN."""
  def half_kernel(x_ref, o_ref):
    o_ref[:4] = x_ref[:4]  # Leaves o_ref[4:] unwritten.

  x = jnp.ones((8,), jnp.float32)
  out = pl.pallas_call(half_kernel, out_shape=jax.ShapeDtypeStruct((8,), jnp.float32),
                       interpret=True)(x)
  assert np.all(np.asarray(out[:4]) == 1) and np.all(np.isnan(np.asarray(out[4:])))


@pytest.mark.parametrize("causal,masked", [(False, True), (True, False)])
def test_kernels_write_every_output_element(causal, masked):
  """Every element of every padded output, padding rows included, is written (not NaN)."""
  b, lq, lk, h, d = 2, 19, 27, 2, 8
  q, k, v, do, mask = _inputs(11, b, lq, lk, h, d, jnp.float32, masked)
  cfg, lq_pad, lk_pad, d_pad = fa.prepare(q.shape, lk, causal=causal, has_mask=masked,
                                          block_sizes=SMALL, interpret=True)
  assert lq_pad > lq and lk_pad > lk  # The shapes exercise padding.

  def padded_outputs(q, k, v, do, mask):
    pq = ((0, 0), (0, lq_pad - lq), (0, 0), (0, d_pad - d))
    pk = ((0, 0), (0, lk_pad - lk), (0, 0), (0, d_pad - d))
    q, do, k, v = jnp.pad(q, pq), jnp.pad(do, pq), jnp.pad(k, pk), jnp.pad(v, pk)
    kv_mask = None
    if masked:
      kv_mask = jnp.pad(mask.astype(jnp.int32), ((0, 0), (0, lk_pad - lk)))
    o, m, l = fa.forward_call(q, k, v, kv_mask, cfg)
    return (o, m, l, *fa.backward_call(q, k, v, kv_mask, o, m, l, do, cfg))

  args = (q, k, v, do, mask)
  outs = jax.jit(padded_outputs).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)
  shapes = {"o": (b, lq_pad, h, d_pad), "m": (b, h, lq_pad), "l": (b, h, lq_pad),
            "dq": (b, lq_pad, h, d_pad), "dk": (b, lk_pad, h, d_pad), "dv": (b, lk_pad, h, d_pad)}
  for (name, shape), x in zip(shapes.items(), outs):
    assert x.shape == shape, name
    assert not np.any(np.isnan(np.asarray(x))), name


def test_default_follows_the_lowering_platform():
  """interpret=None: on CPU the interpreter (plain HLO, no kernel custom call), equal to
  interpret=True; tests/test_kernels_tpu.py checks the TPU and CUDA lowerings."""
  q, k, v, _, mask = _inputs(1, 1, 9, 9, 1, 8, jnp.float32, True)
  auto = jax.jit(lambda q, k, v, m: fa.flash_attention(q, k, v, mask=m, block_sizes=SMALL))
  assert "custom_call" not in auto.lower(q, k, v, mask).as_text()
  forced = fa.flash_attention(q, k, v, mask=mask, block_sizes=SMALL, interpret=True)
  np.testing.assert_allclose(np.asarray(auto(q, k, v, mask)), np.asarray(forced), atol=1e-6)


def test_pallas_accepts_4d_key_padding_and_rejects_other_masks():
  q, k, v, _, mask = _inputs(0, 2, 5, 6, 1, 8, jnp.float32, True)
  got = jax.jit(lambda q, k, v, m: attention_lib.attention(q, k, v, mask=m[:, None, None, :],
                                                           impl="pallas"))(q, k, v, mask)
  want = jax.jit(lambda q, k, v, m: attention_lib.attention(q, k, v, mask=m, impl="xla"))(
      q, k, v, mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="key-padding"):
    attention_lib.attention(q, k, v, mask=jnp.ones((2, 1, 5, 6), bool), impl="pallas")
  with pytest.raises(ValueError, match="pallas"):
    attention_lib.attention(q, k, v, impl="flash")
