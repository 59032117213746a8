"""Supervised image classification: softmax cross-entropy on integer labels.
Batch: `image` (b, h, w, c), `label` (b,) int. Model: a `vit` with `num_classes`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from bigvl.objectives.checks import check_label_smoothing
from bigvl.registry import OBJECTIVES


@OBJECTIVES.register("classification")
@dataclasses.dataclass(frozen=True)
class Classification:
  label_smoothing: float = 0.0

  def __post_init__(self):
    check_label_smoothing(self.label_smoothing)

  def init_inputs(self, batch):
    return (batch["image"],)

  def loss(self, model, params, batch, rng, *, train: bool = True):
    if "label" not in batch:
      raise ValueError("The classification objective needs a `label` in each batch: keep it "
                       "in config.data.train.pp (keep('image', 'label')).")
    logits, _ = model.apply({"params": params}, batch["image"], train=train,
                            rngs={"dropout": rng})
    logits = logits.astype(jnp.float32)
    labels = jax.nn.one_hot(batch["label"], logits.shape[-1])
    if self.label_smoothing:
      labels = optax.smooth_labels(labels, self.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, {"accuracy": accuracy}
