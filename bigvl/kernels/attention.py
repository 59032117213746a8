"""Multi-head dot-product attention: one entry point, several implementations.

`impl="xla"` is the pure-JAX reference (softmax in float32); `impl="cudnn"` calls
`jax.nn.dot_product_attention(implementation="cudnn")` (GPU only); `impl="pallas"` runs a
Pallas kernel chosen by the platform the program is lowered for (`bigvl.kernels.platform`):
the flash-attention kernels of `bigvl.kernels.flash_attention` (Triton on CUDA, the Pallas
interpreter on CPU) or splash attention on TPU (`bigvl.kernels.splash_attention`); both
take causal masking and a key-padding mask. `impl="auto"` picks per platform too: cuDNN on
CUDA where it takes the call (else the Triton kernels), splash on TPU, XLA on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bigvl.kernels import flash_attention
from bigvl.kernels import platform
from bigvl.kernels import splash_attention

IMPLS = ("xla", "cudnn", "pallas", "auto")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None,
              causal: bool = False, impl: str = "xla",
              block_sizes: flash_attention.BlockSizes | None = None,
              segment_ids: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """Softmax attention.

  Args:
    q: (batch, q_len, heads, head_dim).
    k, v: (batch, kv_len, heads, head_dim).
    mask: optional bool, broadcastable to (batch, heads, q_len, kv_len); True = attend.
      A (batch, kv_len) key-padding mask is accepted too.
    causal: query i attends to keys j <= i (aligned at the start).
    impl: "xla" | "cudnn" | "pallas" | "auto". "pallas" takes only key-padding masks (a
      bool (batch, kv_len) mask, or one broadcastable as (batch|1, 1, 1, kv_len)); its
      kernel, and the choice of "auto", follow the platform lowered for (see the module
      docstring).
    block_sizes: tile sizes of the Pallas kernels (None: their defaults); ignored by the
      others. Tiles a platform's kernel cannot take (Triton: powers of two >= 16; TPU:
      multiples of 128) are an error when lowering for that platform.
    segment_ids: optional (q_ids (batch, q_len), kv_ids (batch, kv_len)) int32 >= 0: a
      query attends only to keys of its id (packed sequences). impl "xla", and "pallas" /
      "auto" on TPU; lowering "pallas" with them for CPU or CUDA is an error.

  Returns:
    (batch, q_len, heads, head_dim) in q's dtype.
  """
  if impl not in IMPLS:
    raise ValueError(f"Unknown attention impl {impl!r}; valid: {IMPLS}.")
  if mask is not None and mask.ndim == 2:
    mask = mask[:, None, None, :]
  if impl == "xla":
    return attention_reference(q, k, v, mask=mask, causal=causal, segment_ids=segment_ids)
  if impl == "cudnn":
    if segment_ids is not None:
      raise ValueError("attention impl='cudnn' takes no segment_ids; use 'xla' or 'pallas'.")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                        implementation="cudnn")
  pallas = _pallas_branches(q, k, v, _key_padding(mask, q, k), causal=causal,
                            block_sizes=block_sizes, segment_ids=segment_ids)
  if impl == "auto":
    reference = functools.partial(_reference_branch, causal=causal)
    pallas = dict(pallas, cpu=reference)
    if mask is None and segment_ids is None and _cudnn_takes(q, k, v, causal):
      pallas["cuda"] = functools.partial(_cudnn_branch, causal=causal)
  return platform.by_platform(q, k, v, _key_padding(mask, q, k), segment_ids, **pallas)


def _pallas_branches(q, k, v, kv_mask, *, causal, block_sizes, segment_ids) -> dict:
  """cpu / cuda / tpu branches of impl="pallas", each a function of (q, k, v, mask, ids)."""
  def gpu_cpu(q, k, v, mask, *, interpret):
    return flash_attention.flash_attention(q, k, v, mask=mask, causal=causal,
                                           block_sizes=block_sizes, interpret=interpret)

  def tpu(q, k, v, mask, ids):
    return splash_attention.splash_attention(q, k, v, mask=mask, causal=causal,
                                             segment_ids=ids, block_sizes=block_sizes)

  d = q.shape[-1]
  branches = flash_attention.gpu_and_cpu_branches(
      gpu_cpu, block_error=flash_attention.triton_block_error(
          flash_attention.resolved_blocks(d, q.dtype.itemsize, block_sizes)))
  # The flash kernels have no segment ids: those branches drop the argument, or refuse.
  branches = {name: (lambda fn: lambda q, k, v, mask, ids: fn(q, k, v, mask))(fn)
              for name, fn in branches.items()}
  if segment_ids is not None:
    refuse = platform.unsupported(
        "attention(impl='pallas', segment_ids=...) runs on TPU (splash attention) only; on "
        "CPU and GPU use impl='xla'.", like=_shape_like)
    branches = {name: refuse for name in branches}
  error = splash_attention.block_error(block_sizes)
  branches["tpu"] = platform.unsupported(error, like=_shape_like) if error else tpu
  return branches


def _shape_like(q, k, v, mask, ids):
  return jax.ShapeDtypeStruct(q.shape, q.dtype)


def _reference_branch(q, k, v, mask, ids, *, causal):
  mask = None if mask is None else mask[:, None, None, :]
  return attention_reference(q, k, v, mask=mask, causal=causal, segment_ids=ids)


def _cudnn_branch(q, k, v, mask, ids, *, causal):
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")


def _cudnn_takes(q, k, v, causal: bool) -> bool:
  """Whether cuDNN's fused attention takes this call: 16-bit inputs, head dim a multiple of
  8 up to 128, and a cuDNN that traces on this host (jax asks for its version while
  tracing, so a host without a GPU exporting for CUDA gets the Triton kernels). Masked
  calls go to the Pallas kernels, whose rows with no visible key match the reference."""
  d = q.shape[-1]
  if q.dtype not in (jnp.bfloat16, jnp.float16) or d % 8 or d > 128:
    return False
  try:
    jax.eval_shape(functools.partial(jax.nn.dot_product_attention, is_causal=causal,
                                     implementation="cudnn"), q, k, v)
  except Exception:  # cuDNN missing or rejecting the shape: any reason means "no".
    return False
  return True


def _key_padding(mask, q, k):
  """A 4-D mask that only varies along keys -> (batch, kv_len); anything else is an error."""
  if mask is None:
    return None
  b, lk = q.shape[0], k.shape[1]
  if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[3] != lk \
     or mask.shape[0] not in (1, b):
    raise ValueError(f"attention impl='pallas' takes causal=True and key-padding masks "
                     f"((batch, kv_len) or (batch, 1, 1, kv_len)); got mask {mask.shape} for "
                     f"q {q.shape}, k {k.shape}. Use impl='xla' for general masks.")
  return jnp.broadcast_to(mask[:, 0, 0, :], (b, lk)).astype(bool)


def attention_reference(q, k, v, *, mask=None, causal=False, segment_ids=None):
  """Plain jnp attention; same signature and semantics as `attention` without `impl`.

  Masked logits (mask, causal, different segment ids) are set to finfo(float32).min, so a
  row whose every key is masked gets the uniform average of all values (the Pallas
  kernels reproduce this).
  """
  if mask is not None and mask.ndim == 2:
    mask = mask[:, None, None, :]
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  big_neg = jnp.finfo(jnp.float32).min
  if causal:
    qi = jnp.arange(q.shape[1])[:, None]
    ki = jnp.arange(k.shape[1])[None, :]
    logits = jnp.where(ki <= qi, logits, big_neg)
  if mask is not None:
    logits = jnp.where(mask, logits, big_neg)
  if segment_ids is not None:
    q_ids, kv_ids = segment_ids
    same = q_ids[:, None, :, None] == kv_ids[:, None, None, :]
    logits = jnp.where(same, logits, big_neg)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
