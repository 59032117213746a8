"""Masked image modelling on held-out images: the masked-patch loss, and a grid of
original / masked / reconstructed images (also written to TensorBoard by the loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bigvl.data import transforms
from bigvl.evaluators.context import eval_pp, eval_source
from bigvl.evaluators.images import to_rgb_uint8
from bigvl.models.masked_image import patchify, unpatchify
from bigvl.objectives import masked_image
from bigvl.objectives.masking import random_keep
from bigvl.registry import EVALUATORS


def reconstruct(model, objective, params, images, rng):
  """(masked, reconstruction, mask): images (b, h, w, c) with masked patches NaN; the
  prediction on masked patches and the originals elsewhere; the (b, n) bool mask.

  With MAE's per-patch normalised targets the prediction is de-normalised with each
  original patch's mean and variance, as the MAE paper's figures are.
  """
  if not isinstance(objective, (masked_image.MAE, masked_image.SimMIM)):
    raise ValueError(f"The run's objective is {type(objective).__name__}; reconstructions "
                     "need mae or simmim.")
  p = model.patch_size()
  gh, gw = images.shape[1] // p, images.shape[2] // p
  images = jnp.asarray(images, jnp.float32)[:, :gh * p, :gw * p]

  @jax.jit
  def run(params, images, rng):
    keep, mask = random_keep(rng, images.shape[0], gh * gw, objective.mask_ratio)
    if isinstance(objective, masked_image.MAE):
      pred = model.apply({"params": params}, images, keep)
    else:
      pred = model.apply({"params": params}, images, mask)
    target = patchify(images, p)
    if getattr(objective, "norm_pix_loss", False):
      mean, var = target.mean(-1, keepdims=True), target.var(-1, keepdims=True)
      pred = pred * jnp.sqrt(var + 1e-6) + mean
    m = mask[..., None]
    return (unpatchify(jnp.where(m, jnp.nan, target), p, gh, gw),
            unpatchify(jnp.where(m, pred, target), p, gh, gw), mask)

  return tuple(np.asarray(x) for x in jax.device_get(run(params, images, rng)))


def image_grid(rows, vmin: float, vmax: float, scale: int = 4, gap: int = 2) -> np.ndarray:
  """rows (each (n, h, w, c) float, NaN = grey) -> one uint8 (H, W, 3) image, white gaps."""
  n, h, w, _ = rows[0].shape
  H, W = h * scale, w * scale
  out = np.full((len(rows) * (H + gap) - gap, n * (W + gap) - gap, 3), 255, np.uint8)
  for r, row in enumerate(rows):
    for i, img in enumerate(row):
      out[r * (H + gap):r * (H + gap) + H, i * (W + gap):i * (W + gap) + W] = \
          to_rgb_uint8(img, vmin, vmax, scale)
  return out


@EVALUATORS.register("reconstruction")
class Reconstruction:
  """The MAE / SimMIM objective's loss on held-out images (`loss`: masked patches only, as
  in training, fixed masks from `seed`), and a grid of the first `num_images` reconstructions
  that the loop writes to TensorBoard (`eval/<name>/reconstruction`)."""

  def __init__(self, ctx, *, data: dict, num_images: int = 8, max_examples: int = 512,
               seed: int = 0, value_range=(-1.0, 1.0), objective=None):
    from bigvl import objectives
    self.ctx = ctx
    self.source = eval_source(data, "reconstruction")
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.objective = objectives.build(objective) if objective else ctx.objective
    if not isinstance(self.objective, (masked_image.MAE, masked_image.SimMIM)):
      raise ValueError("The reconstruction evaluator needs an mae or simmim objective.")
    self.num_images, self.seed, self.value_range = num_images, seed, tuple(value_range)
    n = min(len(self.source), max_examples)
    self._examples = np.stack([self.pp(self.source[i])["image"] for i in range(n)])
    model, obj = ctx.model, self.objective
    self._loss = jax.jit(lambda p, x, rng: obj.loss(model, p, {"image": x}, rng, train=False)[0])
    self._grid = None

  def run(self, params) -> dict[str, float]:
    rng = jax.random.PRNGKey(self.seed)
    loss = float(self._loss(params, self._examples, rng))
    masked, recon, _ = reconstruct(self.ctx.model, self.objective, params,
                                   self._examples[:self.num_images], rng)
    self._grid = image_grid([self._examples[:self.num_images, :recon.shape[1], :recon.shape[2]],
                             masked, recon], *self.value_range)
    return {"loss": loss}

  def images(self) -> dict[str, np.ndarray]:
    """{"reconstruction": uint8 (H, W, 3)} of the last run: original / masked / predicted."""
    return {} if self._grid is None else {"reconstruction": self._grid}
