"""Zero-shot classification with a two-tower model: class names through prompt templates."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bigvl import sharding as sh
from bigvl.data import loader, transforms
from bigvl.evaluators.context import data_label, eval_batch_size, eval_pp, eval_source
from bigvl.models.capabilities import ImageTextEmbedder, require
from bigvl.registry import EVALUATORS


def class_embeddings(text_emb: np.ndarray) -> np.ndarray:
  """(classes, templates, d) normalised template embeddings -> (classes, d): renormalised mean."""
  m = text_emb.mean(axis=1)
  return m / np.linalg.norm(m, axis=-1, keepdims=True)


def topk_accuracy(img_emb: np.ndarray, labels: np.ndarray, cls_emb: np.ndarray,
                  ks=(1, 5)) -> dict[str, float]:
  """Fraction of images whose label is among the k classes of highest cosine similarity."""
  sims = img_emb @ cls_emb.T
  order = np.argsort(-sims, axis=1, kind="stable")
  out = {}
  for k in ks:
    if k <= cls_emb.shape[0]:
      out[f"top{k}"] = float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1)))
  return out


@EVALUATORS.register("zeroshot")
class ZeroShot:
  """Top-1/top-5 of `argmax_c <image, mean_t text(template_t(class_c))>` on a labelled source
  (`data`: its data config; `class_names`, `templates`: default the source's)."""

  def __init__(self, ctx, *, data: dict, class_names=None, templates=None,
               batch_size: int = 256):
    require(ctx.model, ImageTextEmbedder, "zeroshot")
    self.ctx = ctx
    self.source = eval_source(data, "zeroshot")
    self.class_names = list(class_names or getattr(self.source, "class_names", []) or [])
    self.templates = list(templates or getattr(self.source, "templates", None) or ["{}"])
    if not self.class_names:
      raise ValueError(f"zeroshot on {data_label(data)}: the source has no class_names; "
                       "set them in the eval config.")
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.batch_size = eval_batch_size(ctx, batch_size)
    model = ctx.model
    self._embed_image = jax.jit(
        lambda p, x: model.apply({"params": p}, x, method="embed_image_joint"))
    self._embed_text = jax.jit(lambda p, t: model.apply({"params": p}, t, method="embed_text"))

  def _global(self, x):
    return sh.to_global_batch({"x": x}, self.ctx.mesh, self.ctx.rules)["x"]

  def _texts_embedding(self, params) -> np.ndarray:
    prompts = [t.format(c) for c in self.class_names for t in self.templates]
    tokens = self.ctx.tokenizer.encode(prompts, self.ctx.text_len)
    n = len(prompts)
    pad = (-n) % self.batch_size
    tokens = np.concatenate([tokens, np.repeat(tokens[:1], pad, 0)])
    embs = []
    for i in range(0, len(tokens), self.batch_size):
      # Every process holds all prompts: a replicated global array.
      chunk = jax.make_array_from_process_local_data(
          NamedSharding(self.ctx.mesh, P()), tokens[i:i + self.batch_size])
      embs.append(sh.to_host(self._embed_text(params, chunk)))
    emb = np.concatenate(embs)[:n]
    return emb.reshape(len(self.class_names), len(self.templates), -1)

  def run(self, params) -> dict[str, float]:
    cls_emb = class_embeddings(self._texts_embedding(params))
    correct = {}
    total = 0
    for batch in loader.eval_batches(self.source, self.pp, self.batch_size // self.ctx.process_count,
                                     self.ctx.process_index, self.ctx.process_count):
      g = sh.to_global_batch({"image": batch["image"], "label": batch["label"],
                              "mask": batch["_mask"]}, self.ctx.mesh, self.ctx.rules)
      emb = sh.to_host(self._embed_image(params, g["image"]))
      labels, gmask = sh.to_host(g["label"]), sh.to_host(g["mask"])
      acc = topk_accuracy(emb[gmask], labels[gmask], cls_emb)
      m = int(gmask.sum())
      for k, v in acc.items():
        correct[k] = correct.get(k, 0.0) + v * m
      total += m
    return {k: v / total for k, v in correct.items()}
