"""Evaluators on frozen image features: few-shot / linear probe by closed-form regularised
least squares (as big_vision's few-shot evaluator), and k-nearest neighbours.

Features: the model's `embed_image` (bigvl/models/capabilities.py `ImageEmbedder`): a ViT's
pooled features (`pre_logits`); a two-tower model's normalised image embedding; a captioner's
mean image token; MAE, SimMIM: the mean encoder token; DINO: the teacher backbone's pooled
features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bigvl import sharding as sh
from bigvl.data import loader, transforms
from bigvl.evaluators.context import eval_batch_size, eval_pp, eval_source
from bigvl.models.capabilities import ImageEmbedder, require
from bigvl.registry import EVALUATORS

DEFAULT_L2 = tuple(2.0 ** k for k in range(-6, 14, 2))


def extract_features(ctx, source, pp, batch_size: int, params, feature_fn) -> tuple:
  """(features (n, d) float32, labels (n,) int) of every example of `source`, in order."""
  feats, labels = None, np.zeros(len(source), np.int64)
  for batch in loader.eval_batches(loader.IndexedSource(source), pp,
                                   batch_size // ctx.process_count, ctx.process_index,
                                   ctx.process_count):
    g = sh.to_global_batch({"image": batch["image"], "index": batch["_index"],
                            "label": batch["label"], "mask": batch["_mask"]},
                           ctx.mesh, ctx.rules)
    f = sh.to_host(feature_fn(params, g["image"])).astype(np.float32)
    index, mask = sh.to_host(g["index"]), sh.to_host(g["mask"])
    if feats is None:
      feats = np.zeros((len(source), f.shape[-1]), np.float32)
    feats[index[mask]] = f[mask]
    labels[index[mask]] = sh.to_host(g["label"])[mask]
  return feats, labels


def ridge_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float):
  """Closed-form least squares onto +-1 one-hot targets with an L2 penalty.

  Args: x (n, d) features, y (n,) labels. Returns predict(x (m, d)) -> (m,) labels.
  Centred features with the bias left unpenalised; solved in float64.
  """
  x = np.asarray(x, np.float64)
  mean = x.mean(0)
  xc = x - mean
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  t_mean = targets.mean(0)
  w = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ (targets - t_mean))
  return lambda q: np.argmax((np.asarray(q, np.float64) - mean) @ w + t_mean, axis=1)


def knn_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, k: int):
  """Cosine k-nearest-neighbour vote, each neighbour weighted by its similarity.

  Returns predict(q (m, d)) -> (m,) labels; ties go to the lower label.
  """
  norm = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  x = norm(np.asarray(x, np.float32))

  def predict(q):
    sims = norm(np.asarray(q, np.float32)) @ x.T
    kk = min(k, x.shape[0])
    top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    votes = np.zeros((sims.shape[0], num_classes))
    np.add.at(votes, (np.arange(sims.shape[0])[:, None], y[top]),
              np.take_along_axis(sims, top, 1))
    return votes.argmax(1)
  return predict


class _Probe:
  """Shared setup: a labelled source's test split (`data`, its data config; the split
  evaluated, default "test") and train split (`train_split` of the same data), and a
  feature function."""
  kind = "probe"  # The evaluator's registered name, for errors.

  def __init__(self, ctx, *, data, train_split, batch_size):
    require(ctx.model, ImageEmbedder, self.kind)
    self.ctx = ctx
    self.train = eval_source(data, self.kind, split=train_split)
    self.test = eval_source(data, self.kind)
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.batch_size = eval_batch_size(ctx, batch_size)
    model = ctx.model
    self._feature_fn = jax.jit(lambda p, x: model.apply(
        {"params": p}, x, method="embed_image").astype(jnp.float32))

  def features(self, params):
    tr = extract_features(self.ctx, self.train, self.pp, self.batch_size, params,
                          self._feature_fn)
    te = extract_features(self.ctx, self.test, self.pp, self.batch_size, params,
                          self._feature_fn)
    num_classes = int(max(tr[1].max(), te[1].max())) + 1
    return tr, te, num_classes


@EVALUATORS.register("fewshot")
class FewShot(_Probe):
  """Linear probes on frozen features: `{k}shot` (k training examples per class) for each
  k in `shots`, and `linear` (the whole train split) when `full=True`. The L2 penalty is
  picked from `l2_regs` on a held-out part of the train split, never on the test split."""
  kind = "fewshot"

  def __init__(self, ctx, *, data: dict, train_split: str = "train", shots=(1, 5, 10),
               full: bool = True, l2_regs=DEFAULT_L2, seed: int = 0, batch_size: int = 256):
    super().__init__(ctx, data=data, train_split=train_split, batch_size=batch_size)
    self.shots, self.full, self.l2_regs, self.seed = tuple(shots), full, tuple(l2_regs), seed

  def _fit(self, x, y, xval, yval, num_classes):
    best = max(self.l2_regs, key=lambda l2: np.mean(
        ridge_classifier(x, y, num_classes, l2)(xval) == yval))
    return ridge_classifier(x, y, num_classes, best)

  def run(self, params) -> dict[str, float]:
    (xtr, ytr), (xte, yte), num_classes = self.features(params)
    rng = np.random.default_rng(self.seed)
    order = rng.permutation(len(ytr))
    out = {}
    for k in self.shots:
      picked, val = [], []
      for c in range(num_classes):
        idx = order[ytr[order] == c]
        picked += list(idx[:k])
        val += list(idx[k:2 * k + 5])  # Held out from the same split, to pick the L2 penalty.
      predict = self._fit(xtr[picked], ytr[picked], xtr[val], ytr[val], num_classes)
      out[f"{k}shot"] = float(np.mean(predict(xte) == yte))
    if self.full:
      cut = len(order) // 5
      val, fit = order[:cut], order[cut:]
      best = max(self.l2_regs, key=lambda l2: np.mean(
          ridge_classifier(xtr[fit], ytr[fit], num_classes, l2)(xtr[val]) == ytr[val]))
      out["linear"] = float(np.mean(ridge_classifier(xtr, ytr, num_classes, best)(xte) == yte))
    return out


@EVALUATORS.register("knn")
class KNN(_Probe):
  """k-nearest-neighbour (cosine) classification of the test split by the train split."""
  kind = "knn"

  def __init__(self, ctx, *, data: dict, train_split: str = "train", k: int = 20,
               batch_size: int = 256):
    super().__init__(ctx, data=data, train_split=train_split, batch_size=batch_size)
    if k < 1:
      raise ValueError(f"knn: k={k} must be >= 1.")
    self.k = k

  def run(self, params) -> dict[str, float]:
    (xtr, ytr), (xte, yte), num_classes = self.features(params)
    return {"top1": float(np.mean(knn_classifier(xtr, ytr, num_classes, self.k)(xte) == yte))}
