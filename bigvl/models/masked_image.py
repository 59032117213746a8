"""Masked image modelling models: MAE (He et al. 2021) and SimMIM (Xie et al. 2021).

Both predict the pixels of image patches, laid out as `patchify` gives them: (b, n, p*p*c)
with the patches in row-major order, as the ViT's patch embedding orders its tokens.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigvl import sharding as sh
from bigvl.models import layers
from bigvl.models.vit import ViT, patch_size as vit_patch_size
from bigvl.registry import MODELS, check_kwargs


def patchify(images, p: int):
  """(b, h, w, c) -> (b, (h//p)*(w//p), p*p*c), row-major over patches; pixels past the last
  whole patch are dropped, as the ViT's patch embedding does."""
  b, h, w, c = images.shape
  gh, gw = h // p, w // p
  x = images[:, :gh * p, :gw * p].reshape(b, gh, p, gw, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)


def unpatchify(patches, p: int, gh: int, gw: int):
  """Inverse of `patchify`: (b, gh*gw, p*p*c) -> (b, gh*p, gw*p, c)."""
  b, _, d = patches.shape
  c = d // (p * p)
  x = patches.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * p, gw * p, c)


def _encoder(opts: dict | None, what: str, dtype) -> ViT:
  opts = dict(opts or {})
  check_kwargs(ViT, opts, f"config.model.{what}")
  for k in ("pool", "num_classes", "rep_size"):
    if opts.pop(k, None) not in (None, "none"):
      raise ValueError(f"config.model.{what}.{k} is set, but a masked-image encoder keeps all "
                       "its tokens (pool='none', no head): remove it.")
  return ViT(**opts, pool="none", dtype=dtype)


class _MaskedImageModel(nn.Module):
  """What MAE and SimMIM share: the encoder options and the feature read by probes."""

  def patch_size(self) -> int:
    return vit_patch_size(self.encoder)

  def embed_image(self, image):
    """(b, h, w, c) -> (b, width): the mean of the encoder's tokens over the whole image."""
    tokens, _ = self.enc(image, train=False)
    return tokens.mean(axis=1)


@MODELS.register("mae")
class MAE(_MaskedImageModel):
  """Masked autoencoder: (image (b,h,w,c), keep (b,k) | None) -> pixel predictions (b, n, p*p*c).

  The encoder sees only the `keep` patches (all when None); a narrower decoder gets them
  back in place, with a shared learned mask token at the other positions and position
  embeddings of its own (fixed 2-D sin-cos, as the paper's), and predicts every patch's pixels.
  """
  encoder: dict | None = None        # ViT options (pool/head are not used).
  decoder_width: int = 64
  decoder_depth: int = 2
  decoder_mlp_dim: int = 256
  decoder_heads: int = 4
  channels: int = 3                  # Image channels predicted.
  dtype: Any = jnp.float32

  def setup(self):
    self.enc = _encoder(self.encoder, "encoder", self.dtype)
    dense = lambda n, name: nn.Dense(
        n, dtype=self.dtype, name=name,
        kernel_init=layers.logical(nn.initializers.xavier_uniform(), (sh.EMBED, None)),
        bias_init=layers.logical(nn.initializers.zeros, (None,)))
    self.decoder_embed = dense(self.decoder_width, "decoder_embed")
    self.mask_token = self.param("mask_token", layers.logical(
        nn.initializers.normal(0.02), (None, None, sh.EMBED)), (1, 1, self.decoder_width))
    self.decoder = layers.Encoder(self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim,
                                  dtype=self.dtype, name="decoder")
    p = self.patch_size()
    self.pred = dense(p * p * self.channels, "decoder_pred")

  def __call__(self, image, keep=None, *, train: bool = False):
    p = self.patch_size()
    b, gh, gw = image.shape[0], image.shape[1] // p, image.shape[2] // p
    n = gh * gw
    if image.shape[-1] != self.channels:
      raise ValueError(f"MAE: images have {image.shape[-1]} channels, config.model.channels="
                       f"{self.channels}.")
    if keep is None:
      keep = jnp.broadcast_to(jnp.arange(n), (b, n))
    tokens, _ = self.enc(image, train=train, keep=keep)
    y = self.decoder_embed(tokens)
    full = jnp.broadcast_to(self.mask_token.astype(y.dtype), (b, n, self.decoder_width))
    full = full.at[jnp.arange(b)[:, None], keep].set(y)
    pe = layers.posemb_sincos_2d(gh, gw, self.decoder_width)
    full = full + jnp.asarray(pe, full.dtype)
    return self.pred(self.decoder(full, train=train))


@MODELS.register("simmim")
class SimMIM(_MaskedImageModel):
  """SimMIM: (image (b,h,w,c), mask (b,n) bool | None) -> pixel predictions (b, n, p*p*c).

  Masked patches enter the encoder as a learned mask token; a single linear layer maps each
  output token to its patch's pixels.
  """
  encoder: dict | None = None        # ViT options (pool/head are not used).
  channels: int = 3
  dtype: Any = jnp.float32

  def setup(self):
    self.enc = _encoder(self.encoder, "encoder", self.dtype)
    p = self.patch_size()
    self.pred = nn.Dense(p * p * self.channels, dtype=self.dtype, name="pred",
                         kernel_init=layers.logical(nn.initializers.xavier_uniform(),
                                                    (sh.EMBED, None)),
                         bias_init=layers.logical(nn.initializers.zeros, (None,)))

  def __call__(self, image, mask=None, *, train: bool = False):
    p = self.patch_size()
    n = (image.shape[1] // p) * (image.shape[2] // p)
    if mask is None:   # Still through the mask path, so that init creates the mask token.
      mask = jnp.zeros((image.shape[0], n), bool)
    tokens, _ = self.enc(image, train=train, mask=mask)
    return self.pred(tokens)
