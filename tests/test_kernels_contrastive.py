"""Blockwise SigLIP / CLIP losses (Pallas, interpret mode on CPU) against the dense losses.

Values and gradients with respect to zimg, ztxt, t and b, for batch sizes that are not
multiples of the block, non-square blocks without positives (the chunked cross-device
loss), embedding dims wider than one `block_d` chunk, and the memory claim: no (n, m)
buffer in the compiled program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl.kernels import contrastive_loss as cl
from bigvl.objectives import contrastive as objectives_contrastive

pytestmark = pytest.mark.unit

# Correctness is under test, not XLA's code quality: fast compiles for both paths alike.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _embeddings(seed, n, m, d, dtype=jnp.float32):
  # NumPy, not jax.random: eager jax ops each compile, which would dominate these tests.
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  zimg = unit(rng.standard_normal((n, d)).astype(np.float32))
  ztxt = unit(rng.standard_normal((m, d)).astype(np.float32))
  # Make the positives look like positives, so both label signs matter.
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

# (n, d, block sizes): n not a multiple of the block; block_d < d takes the chunked path.
SHAPES = [
    (37, 24, cl.BlockSizes(block_rows=8, block_cols=16, block_d=8)),
    (50, 32, cl.BlockSizes(block_rows=16, block_cols=16, block_d=64)),
    (5, 3, None),
]


@pytest.mark.parametrize("n,d,blocks", SHAPES)
def test_sigmoid_loss_matches_dense(n, d, blocks):
  zimg, ztxt = _embeddings(n, n, n, d)
  got = _value_and_grads(
      lambda x, y, t, b: cl.sigmoid_loss(x, y, t, b, impl="pallas", block_sizes=blocks),
      zimg, ztxt, T, B)
  want = _value_and_grads(cl.sigmoid_loss_reference, zimg, ztxt, T, B)
  _assert_close(got, want)


@pytest.mark.parametrize("n,d,blocks", SHAPES)
def test_softmax_loss_matches_dense(n, d, blocks):
  zimg, ztxt = _embeddings(n + 1, n, n, d)
  got = _value_and_grads(
      lambda x, y, t: cl.softmax_loss(x, y, t, impl="pallas", block_sizes=blocks),
      zimg, ztxt, T)
  want = _value_and_grads(cl.softmax_loss_reference, zimg, ztxt, T)
  (gv, gg), (wv, wg) = got, want
  _assert_close((gv, gg + (B,)), (wv, wg + (B,)))


@pytest.mark.parametrize("n,m,positives", [(37, 21, False), (21, 37, False), (29, 29, True)])
def test_sigmoid_block_matches_dense(n, m, positives):
  """The per-ring-step block: n != m without positives, or square with them."""
  zimg, ztxt = _embeddings(n * m, n, m, 16)
  blocks = cl.BlockSizes(block_rows=8, block_cols=8, block_d=8)
  got = _value_and_grads(
      lambda x, y, t, b: cl.sigmoid_loss_block(x, y, t, b, positives=positives,
                                               impl="pallas", block_sizes=blocks),
      zimg, ztxt, T, B)
  want = _value_and_grads(
      lambda x, y, t, b: cl.sigmoid_loss_block_reference(x, y, t, b, positives=positives),
      zimg, ztxt, T, B)
  # An unnormalised sum of n*m terms: compare relative to its size.
  scale = float(want[0])
  _assert_close(jax.tree.map(lambda x: x / scale, got), jax.tree.map(lambda x: x / scale, want))


def test_block_sums_compose_into_the_full_loss():
  """Splitting the texts into chunks (as the ring loss does) gives the dense loss."""
  zimg, ztxt = _embeddings(1, 24, 24, 8)
  chunks = [(0, 8), (8, 16), (16, 24)]
  blocks = cl.BlockSizes(block_rows=8, block_cols=8, block_d=8)

  def ring(x, y, t, b):
    total = 0.0
    for lo, hi in chunks:  # Image chunk 1 (rows 8:16) against every text chunk.
      total += cl.sigmoid_loss_block(x[8:16], y[lo:hi], t, b, positives=(lo == 8),
                                     impl="pallas", block_sizes=blocks)
    return total

  def dense(x, y, t, b):
    logits = t * x[8:16] @ y.T + b
    labels = -np.ones((8, 24), np.float32)
    labels[:, 8:16] += 2 * np.eye(8, dtype=np.float32)
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits))

  got = _value_and_grads(ring, zimg, ztxt, T, B)
  want = _value_and_grads(dense, zimg, ztxt, T, B)
  scale = float(want[0])
  _assert_close(jax.tree.map(lambda x: x / scale, got), jax.tree.map(lambda x: x / scale, want))


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_kernels_write_every_output_element(kind):
  """Interpret mode fills unwritten outputs with NaN (see the attention canary test):
  no NaN anywhere in the padded outputs, padding rows and the chunked dx included."""
  n, m, d = 19, 13, 24
  zimg, ztxt = _embeddings(3, n, m, d)
  plan = cl.prepare(kind, False, n, m, d,
                    cl.BlockSizes(block_rows=8, block_cols=8, block_d=8), True)
  assert plan.n_pad > n and plan.m_pad > m and plan.d_pad // plan.img.block_d > 1

  def padded_outputs(zimg, ztxt, t, b):
    x, y = cl.pad_to(zimg, plan.n_pad, plan.d_pad), cl.pad_to(ztxt, plan.m_pad, plan.d_pad)
    tb = cl.scale_bias(t, b)
    rows = cl.forward_call(x, y, tb, plan.img)
    stats = ()
    if kind == "softmax":
      cols = cl.forward_call(y, x, tb, plan.txt)
      stats = (rows, jnp.ones_like(rows), cols, jnp.ones_like(cols))
    return (rows, *cl.backward_call(x, y, tb, plan.img, stats))

  args = (zimg, ztxt, T, B)
  outs = jax.jit(padded_outputs).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)
  shapes = {"rows": (plan.n_pad,), "dx": (plan.n_pad, plan.d_pad), "gsum": (plan.n_pad,)}
  for (name, shape), a in zip(shapes.items(), outs):
    assert a.shape == shape, name
    assert not np.any(np.isnan(np.asarray(a))), name


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_no_batch_by_batch_buffer(kind):
  """The compiled loss+grad of the kernel path has no (n, n) temporary; the dense one does."""
  n, d = 512, 16
  zimg, ztxt = _embeddings(5, n, n, d)

  def loss(impl):
    if kind == "sigmoid":
      return lambda x, y, t, b: cl.sigmoid_loss(x, y, t, b, impl=impl)
    return lambda x, y, t, b: cl.softmax_loss(x, y, t, impl=impl)

  def temp_bytes(impl):
    f = jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2, 3)))
    compiled = f.lower(zimg, ztxt, T, B).compile(compiler_options=FAST_COMPILE)
    return compiled.memory_analysis().temp_size_in_bytes

  logits_bytes = n * n * 4
  assert temp_bytes("xla") >= logits_bytes
  assert temp_bytes("pallas") < logits_bytes // 4


def test_objectives_keep_their_names_and_switch():
  zimg, ztxt = _embeddings(2, 6, 6, 4)
  both = jax.jit(lambda x, y, t, b: (objectives_contrastive.sigmoid_loss(x, y, t, b),
                                     cl.sigmoid_loss_reference(x, y, t, b),
                                     objectives_contrastive.softmax_loss(x, y, t),
                                     cl.softmax_loss_reference(x, y, t)))(zimg, ztxt, T, B)
  np.testing.assert_allclose(float(both[0]), float(both[1]), rtol=1e-6)
  np.testing.assert_allclose(float(both[2]), float(both[3]), rtol=1e-6)
  from bigvl import objectives
  assert objectives.build({"name": "siglip", "loss_impl": "pallas"}).loss_impl == "pallas"
  assert objectives.build({"name": "clip"}).loss_impl == "xla"
  with pytest.raises(ValueError, match="loss_impl"):
    objectives.build({"name": "siglip", "loss_impl": "triton"})
  with pytest.raises(ValueError, match="positives"):
    cl.sigmoid_loss_block(zimg, ztxt[:5], T, B, positives=True, impl="pallas")


def test_objective_uses_the_kernel():
  """Siglip(loss_impl='pallas') and Clip(...) give the dense objectives' losses."""
  zimg, ztxt = _embeddings(4, 10, 10, 8)

  class FakeTowers:
    def apply(self, variables, image, text, train, rngs):
      return zimg, ztxt, {"t": T, "b": B}

  from bigvl import objectives

  @jax.jit
  def losses():
    batch = {"image": 0, "text": 0}
    return {(name, impl): objectives.build({"name": name, "loss_impl": impl}).loss(
        FakeTowers(), {}, batch, None)[0]
        for name in ("siglip", "clip") for impl in ("xla", "pallas")}

  out = losses()
  for name in ("siglip", "clip"):
    np.testing.assert_allclose(float(out[name, "pallas"]), float(out[name, "xla"]),
                               rtol=1e-5, atol=1e-6)
