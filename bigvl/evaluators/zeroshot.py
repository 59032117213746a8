"""Zero-shot classification with a two-tower model: class names through prompt templates."""

from __future__ import annotations

import re

import jax
import numpy as np

from bigvl import sharding as sh
from bigvl.data import loader, transforms
from bigvl.evaluators.class_names import as_class_names, as_templates
from bigvl.evaluators.context import data_label, eval_batch_size, eval_pp, eval_source
from bigvl.models.capabilities import ImageTextEmbedder, require
from bigvl.registry import EVALUATORS

# TFDS's imagenet2012 labels are WordNet ids ("n01440764"): no text a model was trained on.
_WNID = re.compile(r"n\d{8}")


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


def embed_texts(embed_fn, params, texts, ctx, batch_size: int) -> np.ndarray:
  """Texts -> (len(texts), d) embeddings, `batch_size` texts at a time.

  `embed_fn(params, tokens (batch_size, ctx.text_len) int32) -> (batch_size, d)` (jitted);
  every process holds all `texts`. Each batch is split over the mesh's batch axes, so every
  device embeds its share of it, not all of it (80,000 ImageNet prompts on 8 devices: 10,000
  each); `batch_size` must be a multiple of the data-parallel size (`eval_batch_size`). The
  last batch is padded with copies of the first text, so one program serves every batch.
  """
  sharding = sh.batch_sharding(ctx.mesh, ctx.rules, 2)
  out = []
  for s in range(0, len(texts), batch_size):
    chunk = list(texts[s:s + batch_size])
    n = len(chunk)
    tokens = ctx.tokenizer.encode(chunk + chunk[:1] * (batch_size - n), ctx.text_len)
    # Every process has the whole batch: each device takes its rows of it.
    g = jax.make_array_from_callback(tokens.shape, sharding, lambda idx: tokens[idx])
    out.append(sh.to_host(embed_fn(params, g))[:n])
  return np.concatenate(out)


@EVALUATORS.register("zeroshot")
class ZeroShot:
  """Top-1/top-5 of `argmax_c <image, class_c>` on a labelled source, where class_c is the
  renormalised mean of the normalised embeddings of `template_t.format(name_c)` over the
  templates (CLIP's prompt ensemble).

  data: its data config. class_names: the names in label order, a registered list's name
  ("imagenet", bigvl/evaluators/class_names.py) or None for the source's. templates: a list
  of templates with one `{}`, a registered list's name ("clip80", "clip7") or None for the
  source's (else "{}", the bare name). batch_size: images, and texts, per batch.
  """

  def __init__(self, ctx, *, data: dict, class_names=None, templates=None,
               batch_size: int = 256):
    require(ctx.model, ImageTextEmbedder, "zeroshot")
    self.ctx = ctx
    self.label = data_label(data)
    self.source = eval_source(data, "zeroshot")
    source_names = getattr(self.source, "class_names", None) or ()
    self.class_names = list(as_class_names(class_names) or source_names)
    self.templates = list(as_templates(templates) or getattr(self.source, "templates", None)
                          or ["{}"])
    if not self.class_names:
      raise ValueError(f"zeroshot on {self.label}: the source has no class_names; "
                       "set them in the eval config (a list, or a list name like 'imagenet').")
    if not class_names and all(_WNID.fullmatch(n) for n in self.class_names):
      raise ValueError(f"zeroshot on {self.label}: the source's class names are WordNet ids "
                       f"({self.class_names[0]}, ...); set class_names ('imagenet' for "
                       "ImageNet-1k's 1000).")
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.batch_size = eval_batch_size(ctx, batch_size)
    model = ctx.model
    self._embed_image = jax.jit(
        lambda p, x: model.apply({"params": p}, x, method="embed_image_joint"))
    self._embed_text = jax.jit(lambda p, t: model.apply({"params": p}, t, method="embed_text"))

  def prompts(self) -> list[str]:
    """Every prompt, class-major: class c's templates are rows c*T ... c*T + T - 1."""
    return [t.format(c) for c in self.class_names for t in self.templates]

  def text_embeddings(self, params) -> np.ndarray:
    """(classes, templates, d) float32: the normalised embedding of every prompt (all
    classes x templates, e.g. 1000 x 80, embedded `batch_size` at a time)."""
    emb = embed_texts(self._embed_text, params, self.prompts(), self.ctx, self.batch_size)
    return emb.reshape(len(self.class_names), len(self.templates), -1)

  def _check_labels(self, labels: np.ndarray) -> None:
    # A label past the names would silently count as wrong: a name list for another dataset.
    if labels.size and labels.min() < 0:
      raise ValueError(f"zeroshot on {self.label}: label {int(labels.min())}: the source has "
                       "no labels; zero-shot needs a labelled split (e.g. label_key=...).")
    if labels.size and labels.max() >= len(self.class_names):
      raise ValueError(f"zeroshot on {self.label}: label {int(labels.max())} but "
                       f"{len(self.class_names)} class_names (labels 0..{len(self.class_names) - 1}"
                       "); give one name per class, in label order (class_names=...).")

  def run(self, params) -> dict[str, float]:
    cls_emb = class_embeddings(self.text_embeddings(params))
    correct = {}
    total = 0
    for batch in loader.eval_batches(self.source, self.pp, self.batch_size // self.ctx.process_count,
                                     self.ctx.process_index, self.ctx.process_count):
      g = sh.to_global_batch({"image": batch["image"], "label": batch["label"],
                              "mask": batch["_mask"]}, self.ctx.mesh, self.ctx.rules)
      emb = sh.to_host(self._embed_image(params, g["image"]))
      labels, gmask = sh.to_host(g["label"]), sh.to_host(g["mask"])
      self._check_labels(labels[gmask])
      acc = topk_accuracy(emb[gmask], labels[gmask], cls_emb)
      m = int(gmask.sum())
      for k, v in acc.items():
        correct[k] = correct.get(k, 0.0) + v * m
      total += m
    return {k: v / total for k, v in correct.items()}
