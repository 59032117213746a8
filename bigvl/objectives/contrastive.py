"""Contrastive image-text objectives: CLIP softmax (InfoNCE) and SigLIP sigmoid.

The losses are pure functions of L2-normalised embeddings; the objectives wrap them
around a two-tower model that returns `(zimg, ztxt, {"t": ..., "b": ...})`. The losses
themselves live in `bigvl.kernels.contrastive_loss` (dense reference + blockwise Pallas
kernel, picked by `loss_impl`); `softmax_loss` / `sigmoid_loss` are re-exported here.
"""

from __future__ import annotations

import dataclasses

import jax

from bigvl import sharding
from bigvl.kernels.contrastive_loss import IMPLS as LOSS_IMPLS
from bigvl.kernels.contrastive_loss import sigmoid_loss, softmax_loss
from bigvl.models.vit import patch_grid
from bigvl.objectives import chunked
from bigvl.objectives.masking import num_kept, random_keep
from bigvl.registry import OBJECTIVES

__all__ = ["Clip", "Siglip", "sigmoid_loss", "softmax_loss"]


def _check_impl(loss_impl: str) -> None:
  if loss_impl not in LOSS_IMPLS:
    raise ValueError(f"Unknown config.objective.loss_impl {loss_impl!r}; valid: {LOSS_IMPLS}.")


def check_dense_kernel(loss_impl: str, name: str, fix: str) -> None:
  """Refuses the dense Pallas loss on a batch split over devices (call while tracing).

  A kernel is opaque to the SPMD partitioner: it would gather both embedding matrices and
  compute all n x n logits on every device (D times the work). The ring
  (`chunked=True`) is the sharded form of the same loss.
  """
  axes = sharding.current_batch_axes()
  if loss_impl == "pallas" and axes:
    raise ValueError(
        f"config.objective.loss_impl='pallas' ({name}) on a batch split over "
        f"{sharding.axes_size(axes)} devices would gather the whole batch onto each; {fix}")


def _check_ratio(ratio: float) -> None:
  if ratio:
    num_kept(1_000_000, ratio)


def _embed(model, params, batch, rng, train, image_mask_ratio: float = 0.0):
  """(zimg, ztxt, extras); with `image_mask_ratio` (FLIP, training only) the image tower
  encodes a random (1 - ratio) of each image's patches."""
  kw = {}
  if image_mask_ratio and train:
    rng, mask_rng = jax.random.split(rng)
    image = batch["image"]
    gh, gw = patch_grid(model.image, image.shape)
    kw["image_keep"], _ = random_keep(mask_rng, image.shape[0], gh * gw, image_mask_ratio)
  if "image_shapes" in batch:   # NaFlex: `image` holds each image's patches (pp `naflex`).
    if image_mask_ratio:
      raise ValueError("image_mask_ratio (FLIP) does not take NaFlex patches yet; set "
                       "config.objective.image_mask_ratio=0 or drop naflex from the pp.")
    kw["image_shapes"] = batch["image_shapes"]
  return model.apply({"params": params}, batch["image"], batch["text"], train=train,
                     rngs={"dropout": rng}, **kw)


@OBJECTIVES.register("clip")
@dataclasses.dataclass(frozen=True)
class Clip:
  """CLIP softmax contrastive loss. Batch: `image` (b,h,w,c), `text` (b,l)."""
  loss_impl: str = "xla"   # "xla": dense logits | "pallas": blockwise kernel, no (b, b) buffer.
  image_mask_ratio: float = 0.0  # FLIP: drop this fraction of image patches when training.

  def __post_init__(self):
    _check_impl(self.loss_impl)
    _check_ratio(self.image_mask_ratio)

  def loss(self, model, params, batch, rng, *, train: bool = True):
    check_dense_kernel(self.loss_impl, "clip", "use loss_impl='xla' (there is no chunked "
                       "softmax loss yet).")
    zimg, ztxt, extras = _embed(model, params, batch, rng, train, self.image_mask_ratio)
    loss = softmax_loss(zimg, ztxt, extras["t"], impl=self.loss_impl)
    return loss, {"t": extras["t"]}


@OBJECTIVES.register("siglip")
@dataclasses.dataclass(frozen=True)
class Siglip:
  """SigLIP sigmoid loss. Batch: `image` (b,h,w,c), `text` (b,l). The model must have a bias."""
  loss_impl: str = "xla"   # "xla": dense logits | "pallas": blockwise kernel, no (b, b) buffer.
  # True: across devices, the ring of text chunks of the SigLIP paper (no device holds the
  # (b, b) logits; bigvl.objectives.chunked). Same loss; dense on one device.
  chunked: bool = False
  image_mask_ratio: float = 0.0  # FLIP: drop this fraction of image patches when training.

  def __post_init__(self):
    _check_impl(self.loss_impl)
    _check_ratio(self.image_mask_ratio)

  def loss(self, model, params, batch, rng, *, train: bool = True):
    zimg, ztxt, extras = _embed(model, params, batch, rng, train, self.image_mask_ratio)
    if "b" not in extras:
      raise ValueError("The siglip objective needs a model with a learned bias: "
                       "set config.model.bias_init (SigLIP uses -10).")
    if not self.chunked:
      check_dense_kernel(self.loss_impl, "siglip", "set config.objective.chunked=True (the "
                         "ring of text chunks) or loss_impl='xla'.")
    axes = sharding.current_batch_axes() if self.chunked else ()
    if axes:
      # The abstract mesh of the jit trace: shard_map takes it as is, no concrete devices.
      loss = chunked.chunked_sigmoid_loss(zimg, ztxt, extras["t"], extras["b"],
                                          mesh=jax.sharding.get_abstract_mesh(),
                                          batch_axes=axes, impl=self.loss_impl)
    else:   # Not chunked, or nothing to chunk over (one device, or no mesh).
      loss = sigmoid_loss(zimg, ztxt, extras["t"], extras["b"], impl=self.loss_impl)
    return loss, {"t": extras["t"], "b": extras["b"]}
