"""Contrastive image-text objectives: CLIP softmax (InfoNCE) and SigLIP sigmoid.

The losses are pure functions of L2-normalised embeddings; the objectives wrap them
around a two-tower model that returns `(zimg, ztxt, {"t": ..., "b": ...})`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bigvl.objectives import OBJECTIVES


def softmax_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array) -> jax.Array:
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


def sigmoid_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array) -> jax.Array:
  """SigLIP pairwise sigmoid loss.

  Args:
    zimg, ztxt: (n, d); pairs (i, i) are positives, every other (i, j) a negative.
    t, b: scalar temperature and bias (logits = t * zimg @ ztxt.T + b).
  Returns:
    Scalar: -sum_ij log sigmoid(z_ij * logit_ij) / n, z = +1 on the diagonal, -1 elsewhere.
  """
  logits = t * jnp.einsum("id,jd->ij", zimg, ztxt, preferred_element_type=jnp.float32) + b
  n = logits.shape[0]
  labels = 2.0 * jnp.eye(n, dtype=logits.dtype) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n


def _embed(model, params, batch, rng, train):
  return model.apply({"params": params}, batch["image"], batch["text"], train=train,
                     rngs={"dropout": rng})


@OBJECTIVES.register("clip")
@dataclasses.dataclass(frozen=True)
class Clip:
  """CLIP softmax contrastive loss. Batch: `image` (b,h,w,c), `text` (b,l)."""

  def __call__(self, model, params, batch, rng, train: bool = True):
    zimg, ztxt, extras = _embed(model, params, batch, rng, train)
    loss = softmax_loss(zimg, ztxt, extras["t"])
    return loss, {"t": extras["t"]}


@OBJECTIVES.register("siglip")
@dataclasses.dataclass(frozen=True)
class Siglip:
  """SigLIP sigmoid loss. Batch: `image` (b,h,w,c), `text` (b,l). The model must have a bias."""

  def __call__(self, model, params, batch, rng, train: bool = True):
    zimg, ztxt, extras = _embed(model, params, batch, rng, train)
    if "b" not in extras:
      raise ValueError("The siglip objective needs a model with a learned bias: "
                       "set config.model.bias_init (SigLIP uses -10).")
    loss = sigmoid_loss(zimg, ztxt, extras["t"], extras["b"])
    return loss, {"t": extras["t"], "b": extras["b"]}
