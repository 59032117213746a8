"""Dense probe: a linear classifier of each patch's label from the frozen patch tokens.

What a model's dense features are worth (SigLIP 2's claim for its self-distillation and
masked-prediction terms): the image tower's tokens (`embed_patches`, the `PatchEmbedder`
capability) of `train_examples` images of the data's train split fit a closed-form ridge
classifier (bigvl/evaluators/probes.py's, the L2 penalty picked on a fifth of those
patches) of each patch's `patch_labels` (e.g. the `shapes` source with `patch_labels=4`:
background or which shape covers the patch), scored on the test split's patches.

Metrics: `top1` over all test patches, `foreground_top1` over the patches whose label is
not 0 (background is most patches of a sparse image; a probe that says "background"
everywhere gets a high `top1` and 0 here), `mean_class_top1` (accuracy per label,
averaged over labels).

The pp must keep the image's geometry (value_range/normalize only): the labels are the
source's patches, matched to the tokens by position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bigvl import sharding as sh
from bigvl.data import loader, transforms
from bigvl.evaluators.context import eval_batch_size, eval_pp, eval_source
from bigvl.evaluators.probes import DEFAULT_L2, ridge_classifier
from bigvl.models.capabilities import PatchEmbedder, require
from bigvl.registry import EVALUATORS


class _Head:
  """The first `n` examples of a source."""

  def __init__(self, source, n: int):
    self.source, self.n = source, n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


def patch_features(ctx, source, pp, batch_size: int, params, feature_fn, limit: int):
  """(tokens (m, n, d) float32, labels (m, n) int) of the first `limit` examples."""
  feats, labels = None, None
  m = min(limit, len(source))
  src = loader.IndexedSource(_Head(source, m))
  for batch in loader.eval_batches(src, pp, batch_size // ctx.process_count,
                                   ctx.process_index, ctx.process_count):
    if "patch_labels" not in batch:
      raise ValueError("dense_probe: the data has no `patch_labels` (the shapes source: "
                       "patch_labels=<patch size>); keep them in the pp if it has keep(...).")
    g = sh.to_global_batch({"image": batch["image"], "index": batch["_index"],
                            "labels": batch["patch_labels"], "mask": batch["_mask"]},
                           ctx.mesh, ctx.rules)
    f = sh.to_host(feature_fn(params, g["image"])).astype(np.float32)
    lab = sh.to_host(g["labels"]).astype(np.int64)
    if f.shape[1] != lab.shape[1]:
      raise ValueError(f"dense_probe: the model gives {f.shape[1]} patch tokens per image but "
                       f"the data {lab.shape[1]} patch labels; make the source's patch size "
                       "the model's and keep the image size (no resize in the pp).")
    index, mask = sh.to_host(g["index"]), sh.to_host(g["mask"])
    if feats is None:
      feats = np.zeros((m,) + f.shape[1:], np.float32)
      labels = np.zeros((m, lab.shape[1]), np.int64)
    feats[index[mask]] = f[mask]
    labels[index[mask]] = lab[mask]
  return feats, labels


def dense_scores(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """top1, foreground_top1 (labels != 0) and mean_class_top1 of flat patch predictions."""
  ok = predicted == labels
  fg = labels != 0
  per_class = [ok[labels == c].mean() for c in np.unique(labels)]
  return {"top1": float(ok.mean()),
          "foreground_top1": float(ok[fg].mean()) if fg.any() else float("nan"),
          "mean_class_top1": float(np.mean(per_class))}


@EVALUATORS.register("dense_probe")
class DenseProbe:
  """Ridge probe of each patch's label from the frozen patch tokens (module docstring)."""

  def __init__(self, ctx, *, data: dict, train_split: str = "train",
               train_examples: int = 500, test_examples: int = 500, l2_regs=DEFAULT_L2,
               seed: int = 0, batch_size: int = 128):
    require(ctx.model, PatchEmbedder, "dense_probe")
    if train_examples < 2 or test_examples < 1:
      raise ValueError("dense_probe: train_examples must be >= 2 and test_examples >= 1.")
    self.ctx = ctx
    self.train = eval_source(data, "dense_probe", split=train_split)
    self.test = eval_source(data, "dense_probe")
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.batch_size = eval_batch_size(ctx, batch_size)
    self.train_examples, self.test_examples = train_examples, test_examples
    self.l2_regs, self.seed = tuple(l2_regs), seed
    model = ctx.model
    self._feature_fn = jax.jit(lambda p, x: model.apply(
        {"params": p}, x, method="embed_patches").astype(jnp.float32))

  def run(self, params) -> dict[str, float]:
    xtr, ytr = patch_features(self.ctx, self.train, self.pp, self.batch_size, params,
                              self._feature_fn, self.train_examples)
    xte, yte = patch_features(self.ctx, self.test, self.pp, self.batch_size, params,
                              self._feature_fn, self.test_examples)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    # The L2 penalty: picked on the patches of a fifth of the train images, held out whole.
    order = np.random.default_rng(self.seed).permutation(len(xtr))
    cut = max(1, len(order) // 5)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    val, fit = order[:cut], order[cut:]
    best = max(self.l2_regs, key=lambda l2: np.mean(
        ridge_classifier(flat(xtr[fit]), flat(ytr[fit]), num_classes, l2)(flat(xtr[val]))
        == flat(ytr[val])))
    xtr, ytr, xte, yte = flat(xtr), flat(ytr), flat(xte), flat(yte)
    predict = ridge_classifier(xtr, ytr, num_classes, best)
    return dense_scores(predict(xte), yte)
