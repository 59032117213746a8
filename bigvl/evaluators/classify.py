"""Top-1 / top-5 of a classifier's own head: a `vit` with `num_classes` on a labelled split."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bigvl.data import transforms
from bigvl.evaluators.context import data_label, eval_batch_size, eval_pp, eval_source
from bigvl.evaluators.probes import extract_features
from bigvl.registry import EVALUATORS


@EVALUATORS.register("classify")
class Classify:
  """Accuracy of `argmax(logits)` over every example of `data` (its data config; split
  default "test"): `top1`, and `top5` when the head has more than 5 classes.

  For a model trained by the `classification` objective (a ViT with `num_classes`).
  """

  def __init__(self, ctx, *, data: dict, batch_size: int = 256):
    num_classes = getattr(ctx.model, "num_classes", None)
    if not num_classes:
      raise ValueError(f"classify needs a classifier (a `vit` model with num_classes set); "
                       f"this run's model is {type(ctx.model).__name__} without a head. For "
                       "image features use the `fewshot` or `knn` evaluator.")
    self.ctx = ctx
    self.num_classes = int(num_classes)
    self.label = data_label(data)
    self.source = eval_source(data, "classify")
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.batch_size = eval_batch_size(ctx, batch_size)
    model = ctx.model
    self._logits = jax.jit(lambda p, x: model.apply({"params": p}, x)[0].astype(jnp.float32))

  def run(self, params) -> dict[str, float]:
    logits, labels = extract_features(self.ctx, self.source, self.pp, self.batch_size, params,
                                      self._logits)
    if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(f"classify on {self.label}: labels {int(labels.min())}..{int(labels.max())}"
                       f" but the head has {self.num_classes} classes; evaluate on the data "
                       "the head was trained for.")
    ranked = np.argsort(-logits, axis=1)
    out = {"top1": float(np.mean(ranked[:, 0] == labels))}
    if self.num_classes > 5:
      out["top5"] = float(np.mean((ranked[:, :5] == labels[:, None]).any(1)))
    return out
