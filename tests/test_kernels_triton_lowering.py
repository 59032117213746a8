"""The kernels lower through Pallas's Triton backend, checked without a GPU.

`jax.export` lowers for a platform other than the local one: with platforms=["cuda"] the
pallas_calls go through the real Pallas -> Triton IR lowering (the step that rejects
unsupported ops, non-power-of-two tiles and the like) and end up as Triton custom calls.
Only the PTX compilation inside XLA, and of course speed, need the GPU. `interpret=False`
forces the Triton body; the default (None) picks it because the lowering is for "cuda".
"""

import jax
import jax.numpy as jnp
import pytest
from jax import export

from bigvl.kernels import attention as attention_lib
from bigvl.kernels import contrastive_loss as cl
from bigvl.kernels import flash_attention as fa

pytestmark = pytest.mark.unit

TRITON = "stablehlo.custom_call @__gpu$xla.gpu.triton"
# The Triton custom call has no serialization-compatibility guarantee; we never serialize.
UNSAFE_OK = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]


def _cuda_module(fn, *specs) -> str:
  return export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=UNSAFE_OK)(
      *specs).mlir_module()


@pytest.mark.parametrize("dtype,head_dim,causal,masked", [
    (jnp.bfloat16, 64, False, False),
    (jnp.bfloat16, 128, True, True),
    (jnp.float32, 72, True, False),    # Head dim padded to 128 for Triton.
])
def test_flash_attention_lowers_to_triton(dtype, head_dim, causal, masked):
  qs = jax.ShapeDtypeStruct((2, 200, 3, head_dim), dtype)   # 200: padded to the block.
  ms = jax.ShapeDtypeStruct((2, 200), jnp.bool_)

  def fwd_bwd(q, k, v, mask):
    def f(q, k, v):
      return fa.flash_attention(q, k, v, mask=mask if masked else None, causal=causal,
                                interpret=False)
    o, vjp = jax.vjp(f, q, k, v)
    return o, vjp(o)

  module = _cuda_module(fwd_bwd, qs, qs, qs, ms)
  for name in ("bigvl_flash_attention_fwd", "bigvl_flash_attention_dq",
               "bigvl_flash_attention_dkdv"):
    assert f'name = "{name}"' in module, name
  assert module.count(TRITON) == 3


@pytest.mark.parametrize("kind,dim", [("sigmoid", 768), ("sigmoid", 64), ("softmax", 1024)])
def test_losses_lower_to_triton(kind, dim):
  zs = jax.ShapeDtypeStruct((300, dim), jnp.bfloat16)
  ss = jax.ShapeDtypeStruct((), jnp.float32)

  def loss(x, y, t, b):
    if kind == "sigmoid":
      return cl.sigmoid_loss(x, y, t, b, impl="pallas", interpret=False)
    return cl.softmax_loss(x, y, t, impl="pallas", interpret=False)

  module = _cuda_module(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), zs, zs, ss, ss)
  # Forward (sigmoid: 1 call, softmax: rows + columns) and the two gradient calls.
  assert module.count(TRITON) == (3 if kind == "sigmoid" else 4)
  assert f'name = "bigvl_{kind}_loss_bwd"' in module


@pytest.mark.parametrize("kind", ["attention", "sigmoid", "softmax"])
def test_default_dispatch_lowers_to_triton_for_cuda(kind):
  """interpret=None (the default) follows the platform lowered for: Triton for "cuda"."""
  if kind == "attention":
    qs = jax.ShapeDtypeStruct((2, 100, 2, 64), jnp.bfloat16)
    fn = jax.grad(lambda q: attention_lib.attention(q, q, q, causal=True, impl="pallas")
                  .astype(jnp.float32).sum())
    assert _cuda_module(fn, qs).count(TRITON) == 3
    return
  zs = jax.ShapeDtypeStruct((300, 64), jnp.bfloat16)
  ss = jax.ShapeDtypeStruct((), jnp.float32)
  loss = ((lambda x, y, t, b: cl.sigmoid_loss(x, y, t, b, impl="pallas")) if kind == "sigmoid"
          else (lambda x, y, t, b: cl.softmax_loss(x, y, t, impl="pallas")))
  module = _cuda_module(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), zs, zs, ss, ss)
  assert module.count(TRITON) == (3 if kind == "sigmoid" else 4)
  assert "tpu_custom_call" not in module


def test_gpu_rejects_tiles_triton_cannot_hold():
  q = jnp.zeros((1, 8, 1, 16), jnp.float32)
  with pytest.raises(ValueError, match="powers of two"):
    fa.flash_attention(q, q, q, block_sizes=fa.BlockSizes(8, 8, 8, 8), interpret=False)
  z = jnp.zeros((8, 16), jnp.float32)
  with pytest.raises(ValueError, match="powers of two"):
    cl.sigmoid_loss(z, z, 1.0, 0.0, impl="pallas", interpret=False,
                    block_sizes=cl.BlockSizes(48, 64, 64))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_default_loss_tiles_fit_hopper_shared_memory(dtype):
  # On an H200 the old block_d=256 asked for 256 KiB of shared memory (two pipeline stages
  # of a (128 + 128, 256) bf16 operand pair) and failed to launch; the budget is 227 KiB.
  itemsize = jnp.dtype(dtype).itemsize
  plan = cl.prepare("sigmoid", True, 32768, 32768, 1024, None, False, itemsize=itemsize)
  cfg = plan.img
  stages = 2
  smem = (cfg.block_rows + cfg.block_cols) * cfg.block_d * itemsize * stages
  assert smem <= 227 * 1024, (cfg, smem)
  assert cfg.block_d >= 64   # Not so thin that the dots starve.


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("head_dim", [64, 72, 128, 256])
def test_default_attention_tiles_fit_hopper_shared_memory(dtype, head_dim):
  # Calibration: float32 at head dim 128 with 128-row tiles asked an H200 for exactly this.
  assert fa.loop_smem_bytes(128, 128, 4) == 262144
  itemsize = jnp.dtype(dtype).itemsize
  bs = fa.default_block_sizes(head_dim, itemsize)
  d = max(16, 1 << (head_dim - 1).bit_length())
  for block in (bs.block_k, bs.block_q_bwd, bs.block_k_bwd):
    assert fa.loop_smem_bytes(block, d, itemsize) <= 227 * 1024, (bs, head_dim, dtype)
    assert block >= 16 and block & (block - 1) == 0
  # The tilings measured fastest on the H200 stay the defaults where they fit.
  if dtype == jnp.bfloat16 and head_dim in (64, 128):
    assert (bs.block_q, bs.block_k, bs.block_k_bwd) == (128, 128, 64)
    assert bs.block_q_bwd == (64 if head_dim == 64 else 128)
