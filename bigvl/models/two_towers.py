"""Image tower + text tower with projections, learnable temperature and (SigLIP) bias."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from bigvl import sharding as sh
from bigvl.models import layers
from bigvl.models.text import TextTransformer
from bigvl.models.vit import ViT
from bigvl.registry import MODELS, check_kwargs


def l2_normalize(x, eps=1e-12):
  """`x` (..., d) scaled to unit L2 norm along its last axis (same shape; `eps` bounds the norm
  squared from below, so zero rows stay finite)."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def logits(zimg: jnp.ndarray, ztxt: jnp.ndarray, extras: dict) -> jnp.ndarray:
  """Image-text logits `t * zimg @ ztxt.T (+ b)`, as HF/open_clip's `logits_per_image`.

  Args:
    zimg: (n_images, d) and ztxt: (n_texts, d) normalised embeddings from `TwoTowers`.
    extras: its third output (`t`, and `b` for SigLIP).
  Returns:
    (n_images, n_texts) float32.
  """
  out = extras["t"] * jnp.einsum("id,jd->ij", zimg, ztxt, preferred_element_type=jnp.float32)
  return out + extras["b"] if "b" in extras else out


@MODELS.register("two_towers")
class TwoTowers(nn.Module):
  """(image (b,h,w,c) | None, text (b,l) | None) -> (zimg, ztxt, extras).

  zimg/ztxt are L2-normalised (b, embed_dim) embeddings (None for a missing input).
  extras: `t` (temperature, exp of the learned log), `b` (bias, or absent), `img/...`, `txt/...`.

  CLIP: `embed_dim` set, projections without bias. SigLIP: `embed_dim=None`; the image tower
  pools with its MAP head, the text tower ends in its own biased head (`text.num_classes`).
  """
  image: dict | None = None          # ViT options.
  text: dict | None = None           # TextTransformer options.
  embed_dim: int | None = None       # Projection size; None: no projection (tower widths must match).
  image_proj_bias: bool = True
  text_proj_bias: bool = True
  temperature_init: float = 10.0     # SigLIP 10; CLIP 1/0.07.
  bias_init: float | None = None     # SigLIP -10; None: no bias (CLIP).
  dtype: Any = jnp.float32

  def setup(self):
    for what, cls, opts in (("image", ViT, self.image), ("text", TextTransformer, self.text)):
      if opts is not None:
        check_kwargs(cls, dict(opts), f"config.model.{what}")
    self.img = ViT(**dict(self.image or {}), dtype=self.dtype) if self.image is not None else None
    self.txt = (TextTransformer(**dict(self.text or {}), dtype=self.dtype)
                if self.text is not None else None)
    if self.embed_dim:
      kw = lambda bias: dict(use_bias=bias, dtype=self.dtype,
                             kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                                        (sh.EMBED, None)),
                             bias_init=layers.logical(nn.initializers.zeros, (None,)))
      self.img_proj = nn.Dense(self.embed_dim, **kw(self.image_proj_bias))
      self.txt_proj = nn.Dense(self.embed_dim, **kw(self.text_proj_bias))
    self.log_t = self.param("t", nn.initializers.constant(np.log(self.temperature_init)), (1,))
    if self.bias_init is not None:
      self.b = self.param("b", nn.initializers.constant(self.bias_init), (1,))

  def _embed(self, tower, proj, x, prefix: str, extras: dict, train: bool, **kw):
    """One tower -> optional projection -> L2-normalised float32 (b, d); extras get `prefix/...`."""
    feats, ex = tower(x, train=train, **kw)
    extras.update({f"{prefix}/{k}": v for k, v in ex.items()})
    if proj is not None:
      feats = proj(feats)
    return l2_normalize(feats.astype(jnp.float32))

  def __call__(self, image=None, text=None, *, train: bool = False, image_keep=None,
               image_shapes=None):
    """`image_keep` (b, k): indices of the patches the image tower encodes (FLIP).
    `image_shapes` (b, 2) int: NaFlex, `image` is then (b, n, p*p*c) patches and this each
    image's (rows, cols) of patches (ViT's `spatial_shapes`)."""
    extras: dict[str, Any] = {"t": jnp.exp(self.log_t[0])}
    if self.bias_init is not None:
      extras["b"] = self.b[0]
    zimg = ztxt = None
    if image is not None:
      zimg = self._embed(self.img, self.img_proj if self.embed_dim else None, image, "img",
                         extras, train, **({} if image_keep is None else {"keep": image_keep}),
                         **({} if image_shapes is None else {"spatial_shapes": image_shapes}))
    if text is not None:
      ztxt = self._embed(self.txt, self.txt_proj if self.embed_dim else None, text, "txt",
                         extras, train)
    return zimg, ztxt, extras

  def embed_image(self, image):
    """image (b, h, w, c) -> (b, d) float32: the L2-normalised image embedding (probe features)."""
    return self.embed_image_joint(image)

  def embed_patches(self, image):
    """image (b, h, w, c) -> (b, rows * cols, width) float32: the image tower's patch tokens
    (dense features; before the pooling and any projection)."""
    return self.img.embed_patches(image)

  def embed_image_joint(self, image):
    """image (b, h, w, c) -> (b, d) float32 L2-normalised, in the space of `embed_text`."""
    return self(image, None, train=False)[0]

  def embed_text(self, text):
    """text (b, L) int32 -> (b, d) float32 L2-normalised, in the space of `embed_image_joint`."""
    if self.text is None:
      raise ValueError("TwoTowers.embed_text: the model has no text tower (config.model.text "
                       "is not set).")
    return self(None, text, train=False)[1]
