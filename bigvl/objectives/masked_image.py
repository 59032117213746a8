"""Masked image modelling objectives: MAE (per-patch normalised pixel MSE on masked patches)
and SimMIM (L1 on masked pixels). Batch: `image` (b, h, w, c)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bigvl.models.masked_image import patchify
from bigvl.models.vit import patch_grid
from bigvl.objectives.masking import num_kept, random_keep
from bigvl.registry import OBJECTIVES


def normalize_patches(target, eps: float = 1e-6):
  """Each patch's pixels to zero mean and unit variance (MAE's norm_pix_loss). (b, n, d)."""
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, keepdims=True)
  return (target - mean) / jnp.sqrt(var + eps)


def masked_mean(per_patch, mask):
  """Mean of (b, n) `per_patch` over the masked (True) patches only."""
  mask = mask.astype(jnp.float32)
  return (per_patch * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _grid_size(model, image) -> int:
  gh, gw = patch_grid(model.encoder, image.shape)
  return gh * gw


@OBJECTIVES.register("mae")
@dataclasses.dataclass(frozen=True)
class MAE:
  """MAE: mask `mask_ratio` of each image's patches at random; the loss is the MSE of the
  predicted pixels on the masked patches only. Model: `mae`."""
  mask_ratio: float = 0.75
  norm_pix_loss: bool = True          # Targets normalised per patch (the paper's default).

  def __post_init__(self):
    num_kept(1_000_000, self.mask_ratio)  # Validates the ratio now, not at the first step.

  def targets(self, model, image):
    t = patchify(image.astype(jnp.float32), model.patch_size())
    return normalize_patches(t) if self.norm_pix_loss else t

  def loss(self, model, params, batch, rng, *, train: bool = True):
    image = batch["image"]
    mask_rng, dropout = jax.random.split(rng)
    keep, mask = random_keep(mask_rng, image.shape[0], _grid_size(model, image),
                             self.mask_ratio)
    pred = model.apply({"params": params}, image, keep, train=train, rngs={"dropout": dropout})
    err = jnp.mean((pred.astype(jnp.float32) - self.targets(model, image)) ** 2, axis=-1)
    loss = masked_mean(err, mask)
    return loss, {"visible_loss": masked_mean(err, ~mask)}


@OBJECTIVES.register("simmim")
@dataclasses.dataclass(frozen=True)
class SimMIM:
  """SimMIM: `mask_ratio` of the patches enter the encoder as a mask token; the loss is the
  L1 error of the predicted pixels on the masked patches only. Model: `simmim`."""
  mask_ratio: float = 0.6

  def __post_init__(self):
    num_kept(1_000_000, self.mask_ratio)

  def loss(self, model, params, batch, rng, *, train: bool = True):
    image = batch["image"]
    mask_rng, dropout = jax.random.split(rng)
    _, mask = random_keep(mask_rng, image.shape[0], _grid_size(model, image), self.mask_ratio)
    pred = model.apply({"params": params}, image, mask, train=train, rngs={"dropout": dropout})
    target = patchify(image.astype(jnp.float32), model.patch_size())
    err = jnp.mean(jnp.abs(pred.astype(jnp.float32) - target), axis=-1)
    return masked_mean(err, mask), {"visible_loss": masked_mean(err, ~mask)}
