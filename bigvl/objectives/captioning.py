"""Generative objectives: captioning (teacher-forced next-token loss), CapPa, CoCa.

The captioning loss is the mean cross-entropy over the caption's tokens up to and including
its EOS (padding after it is ignored), with optional label smoothing.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from bigvl.decoding import token_mask
from bigvl.kernels.contrastive_loss import sigmoid_loss, softmax_loss
from bigvl.objectives.checks import check_label_smoothing
from bigvl.registry import OBJECTIVES

EOS_ID = 2  # bigvl's tokenizers: pad 0, unk 1, eos 2.


def caption_loss(logits, targets, *, eos_id: int = EOS_ID, label_smoothing: float = 0.0):
  """Mean token cross-entropy and accuracy over each caption's tokens up to its EOS.

  Args:
    logits: (b, l, vocab) predictions of `targets` (b, l) int.
  Returns:
    (loss, token accuracy), float32 scalars.
  """
  vocab = logits.shape[-1]
  labels = jax.nn.one_hot(targets, vocab, dtype=jnp.float32)
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
  mask = token_mask(targets, eos_id)
  n = jnp.maximum(mask.sum(), 1.0)
  acc = ((jnp.argmax(logits, -1) == targets) * mask).sum() / n
  return (ce * mask).sum() / n, acc


@OBJECTIVES.register("captioning")
@dataclasses.dataclass(frozen=True)
class Captioning:
  """Teacher-forced captioning. Batch: `image` (b,h,w,c), `text` (b,l) targets."""
  label_smoothing: float = 0.0

  def __post_init__(self):
    check_label_smoothing(self.label_smoothing)

  def loss(self, model, params, batch, rng, *, train: bool = True):
    logits = model.apply({"params": params}, batch["image"], batch["text"], train=train,
                         rngs={"dropout": rng})
    loss, acc = caption_loss(logits, batch["text"], label_smoothing=self.label_smoothing)
    return loss, {"token_accuracy": acc}


@OBJECTIVES.register("cappa")
@dataclasses.dataclass(frozen=True)
class CapPa:
  """CapPa: captioning where a fraction of the batches use parallel prediction (all decoder
  inputs masked, no causal mask), which makes the decoder lean on the image."""
  parallel_fraction: float = 0.75
  label_smoothing: float = 0.0

  def __post_init__(self):
    check_label_smoothing(self.label_smoothing)
    if not 0.0 <= self.parallel_fraction <= 1.0:
      raise ValueError(f"config.objective.parallel_fraction={self.parallel_fraction} must be "
                       "in [0, 1].")

  def loss(self, model, params, batch, rng, *, train: bool = True):
    coin, dropout = jax.random.split(rng)
    parallel = jax.random.bernoulli(coin, self.parallel_fraction) if train else False

    def run(par: bool):
      logits = model.apply({"params": params}, batch["image"], batch["text"], parallel=par,
                           train=train, rngs={"dropout": dropout})
      return caption_loss(logits, batch["text"], label_smoothing=self.label_smoothing)

    if self.parallel_fraction in (0.0, 1.0) or not train:
      loss, acc = run(train and self.parallel_fraction == 1.0)
    else:
      loss, acc = jax.lax.cond(parallel, lambda: run(True), lambda: run(False))
    return loss, {"token_accuracy": acc, "parallel": jnp.asarray(parallel, jnp.float32)}


@OBJECTIVES.register("coca")
@dataclasses.dataclass(frozen=True)
class CoCaObjective:
  """CoCa: `contrastive_weight` x contrastive loss + `caption_weight` x captioning loss.

  Model: `coca`. `contrastive`: softmax (CLIP, the paper's) or sigmoid (needs the model's
  bias_init).
  """
  contrastive_weight: float = 1.0
  caption_weight: float = 2.0
  contrastive: str = "softmax"
  label_smoothing: float = 0.0

  def __post_init__(self):
    check_label_smoothing(self.label_smoothing)
    if self.contrastive not in ("softmax", "sigmoid"):
      raise ValueError(f"config.objective.contrastive={self.contrastive!r}; valid: softmax, "
                       "sigmoid.")

  def loss(self, model, params, batch, rng, *, train: bool = True):
    zimg, ztxt, extras = model.apply({"params": params}, batch["image"], batch["text"],
                                     train=train, rngs={"dropout": rng})
    if self.contrastive == "softmax":
      con = softmax_loss(zimg, ztxt, extras["t"])
    else:
      if "b" not in extras:
        raise ValueError("contrastive='sigmoid' needs config.model.bias_init (e.g. -10).")
      con = sigmoid_loss(zimg, ztxt, extras["t"], extras["b"])
    cap, acc = caption_loss(extras["logits"], batch["text"], label_smoothing=self.label_smoothing)
    loss = self.contrastive_weight * con + self.caption_weight * cap
    return loss, {"contrastive_loss": con, "caption_loss": cap, "token_accuracy": acc,
                  "t": extras["t"]}
