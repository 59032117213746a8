"""Vision Transformer (Dosovitskiy et al.) with big_vision/CLIP/SigLIP switches."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvl import sharding as sh
from bigvl.models import layers, sizes
from bigvl.registry import MODELS


def patch_size(vit_opts: dict) -> int:
  """The patch size of a ViT with options `vit_opts` (its variant's, or `patch_size`)."""
  o = dict(vit_opts or {})
  return sizes.resolve(o.get("variant"), width=o.get("width"), depth=o.get("depth"),
                       mlp_dim=o.get("mlp_dim"), num_heads=o.get("num_heads"),
                       patch_size=o.get("patch_size"))["patch_size"]


def patch_grid(vit_opts: dict, image_shape) -> tuple[int, int]:
  """(rows, cols) of patches a ViT with options `vit_opts` cuts an image of (.., h, w, c) into."""
  p = patch_size(vit_opts)
  return image_shape[-3] // p, image_shape[-2] // p


def resize_posemb(pe, h: int, w: int):
  """Learned (1, n, d) position embedding of a square grid -> (1, h*w, d), bilinear.

  Lets a ViT trained at one resolution run at another (DINO's local crops, fine-tuning
  at a higher resolution).
  """
  n = pe.shape[1]
  side = int(round(n ** 0.5))
  if side * side != n:
    raise ValueError(f"Cannot resize a learned position embedding of {n} positions to a "
                     f"{h}x{w} grid: it is not a square grid.")
  grid = pe.reshape(side, side, pe.shape[-1])
  return jax.image.resize(grid, (h, w, pe.shape[-1]), "bilinear").reshape(1, h * w, -1)


def naflex_posemb_weights(grid: int, shapes, n: int):
  """(b, n, grid*grid) float32: row t of image i mixes the learned grid x grid table into the
  position embedding of patch t of an image of shapes[i] = (rows, cols) patches, patches in
  row-major order; rows t >= rows * cols (padding) take patch 0's.

  The mix is the antialiased bilinear resize (torch `interpolate(mode="bilinear",
  align_corners=False, antialias=True)`, which SigLIP 2's NaFlex uses): a triangle filter on
  half-pixel centres, widened by the scale factor when shrinking, rows normalised to 1. As
  weights rather than a resize call so that every image of a batch has its own grid under
  one jit (the shapes are data, not static).
  """
  sizes = jnp.asarray(shapes, jnp.float32)[:, None, :]                   # (b, 1, 2)
  t = jnp.arange(n, dtype=jnp.float32)[None, :, None]                    # (1, n, 1)
  row = jnp.floor(t / sizes[..., 1:])
  index = jnp.concatenate([row, t - row * sizes[..., 1:]], axis=-1)      # (b, n, 2)
  index = index * (t < sizes.prod(-1, keepdims=True))
  scale = grid / sizes
  support = jnp.maximum(scale, 1.0)
  centre = (index + 0.5) * scale - 0.5
  source = jnp.arange(grid, dtype=jnp.float32)
  wts = jnp.maximum(1.0 - jnp.abs(source - centre[..., None]) / support[..., None], 0.0)
  wts = wts / wts.sum(-1, keepdims=True)                                 # (b, n, 2, grid)
  return (wts[..., 0, :, None] * wts[..., 1, None, :]).reshape(*wts.shape[:2], grid * grid)


def naflex_mask(shapes, n: int):
  """(b, n) bool: True for the rows * cols real patches of each image, False for padding."""
  shapes = jnp.asarray(shapes, jnp.int32)
  return jnp.arange(n)[None] < (shapes[:, 0] * shapes[:, 1])[:, None]


class PatchLinear(nn.Module):
  """Flattened patches (b, n, p*p*c) -> (b, n, width) with the patch Conv's own params
  (`kernel` (p, p, c, width), `bias`): the same tree for images and for NaFlex patches."""
  width: int
  patch_size: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches):
    p = self.patch_size
    c = patches.shape[-1] // (p * p)
    if c * p * p != patches.shape[-1]:
      raise ValueError(f"NaFlex patches have {patches.shape[-1]} values each; expected "
                       f"patch_size^2 * channels = {p}^2 * c.")
    kernel = self.param("kernel", layers.logical(nn.initializers.lecun_normal(),
                                                 (None, None, None, sh.EMBED)),
                        (p, p, c, self.width))
    y = patches.astype(self.dtype) @ kernel.reshape(p * p * c, self.width).astype(self.dtype)
    if self.use_bias:
      bias = self.param("bias", layers.logical(nn.initializers.zeros, (sh.EMBED,)),
                        (self.width,))
      y = y + bias.astype(self.dtype)
    return y


@MODELS.register("vit")
class ViT(nn.Module):
  """images (b, h, w, c) -> (out, extras).

  Token dropping (MAE, FLIP): `keep` (b, k) int indices of the patches to encode; the
  encoder sees only those k tokens (after their position embedding; a class token is
  added after). SimMIM: `mask` (b, n) bool, True where a patch is replaced by a learned
  mask token before the encoder.

  NaFlex (SigLIP 2): `image` (b, n, p*p*c) is each image's patches, row-major, every patch
  flattened (row, col, channel) and zero rows after an image's rows * cols patches, with
  `spatial_shapes` (b, 2) int its (rows, cols). Each image gets the learned
  `posemb_grid` x `posemb_grid` table resized to its own grid (naflex_posemb_weights) and
  attention, pooling and `tokens` ignore its padding (`extras["mask"]`, (b, n) bool).

  `out` is the head's logits when `num_classes` is set, else the pooled features:
  (b, width), or (b, rep_size) with `rep_size`, or (b, n, width) with pool="none".
  extras: `tokens` (b, n, width) after the encoder (n includes the class token),
  `pre_logits` (the pooled features), `logits` with a head.

  Layouts of the references (see bigvl/convert for the exact settings):
    big_vision / SigLIP: pool="map", "gap", "cls" (its "tok") or "first" (its "0"), norm on all
      tokens, act="gelu_tanh".
    CLIP (HF, open_clip): pool="cls", cls_posemb=True, pre_norm=True, patch_bias=False.
    HF ViTModel: pool="cls", cls_posemb=True, rep_size=width (its dense+tanh pooler).
  """
  variant: str | None = None         # "B/16"; explicit fields below override it.
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  patch_size: int | None = None
  posemb: str = "learn"              # learn | sincos2d
  posemb_grid: int | None = None     # posemb="learn": the stored table's grid side (e.g. 14),
                                     # bilinearly resized to each image's grid when they differ;
                                     # None: the grid of the image at init.
  pool: str = "gap"                  # cls | gap | map | first | none; "first": token 0, a patch
                                     # (no class token; big_vision's pool_type="0").
  cls_posemb: bool = False           # The class token has a learned position too (HF/open_clip):
                                     # pos_embedding then covers 1 + patches positions.
  pre_norm: bool = False             # LayerNorm before the first block (CLIP's ln_pre).
  final_norm: bool = True
  norm_pooled: bool = False          # The final LayerNorm acts on the pooled output only (HF CLIP's
                                     # post_layernorm, open_clip final_ln_after_pool): `tokens` stay
                                     # un-normalised. Same pooled output as norm-all for pool="cls".
  patch_bias: bool = True
  act: str = "gelu"
  ln_eps: float = 1e-6
  dropout: float = 0.0
  rep_size: int | None = None        # Dense + tanh after pooling (ViT paper's pre-logits; HF pooler).
  num_classes: int | None = None     # Linear head on the pooled features.
  head_bias: bool = True
  head_zero_init: bool = True
  attention_impl: str = "xla"
  remat: str = "none"                # none | full | dots_saveable (per block).
  scan_layers: bool = False          # nn.scan over the blocks (stacked params; models/layer_scan.py).
  dtype: Any = jnp.float32

  def dims(self) -> dict[str, int]:
    return sizes.resolve(self.variant, width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                         num_heads=self.num_heads, patch_size=self.patch_size)

  @nn.compact
  def __call__(self, image, *, train: bool = False, keep=None, mask=None, spatial_shapes=None):
    d = self.dims()
    width, p = d["width"], d["patch_size"]
    if spatial_shapes is not None or image.ndim == 3:
      return self._naflex(image, spatial_shapes, d, train)
    if image.shape[1] < p or image.shape[2] < p:
      raise ValueError(f"Image size {image.shape[1:3]} is smaller than the patch size {p}.")
    # Pixels past the last whole patch are dropped, as torch's strided Conv2d does (SigLIP
    # So400m/14 at 384px sees 27x27 patches).
    if self.cls_posemb and (self.pool != "cls" or self.posemb != "learn"):
      raise ValueError(f"ViT.cls_posemb=True needs pool='cls' and posemb='learn' "
                       f"(got pool={self.pool!r}, posemb={self.posemb!r}).")
    x = nn.Conv(width, (p, p), strides=(p, p), padding="VALID", use_bias=self.patch_bias,
                dtype=self.dtype, name="embedding",
                kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                           (None, None, None, sh.EMBED)),
                bias_init=layers.logical(nn.initializers.zeros, (sh.EMBED,)))(
                    image.astype(self.dtype))
    b, h, w, _ = x.shape
    x = x.reshape(b, h * w, width)
    if mask is not None:
      if mask.shape != (b, h * w):
        raise ValueError(f"ViT mask has shape {mask.shape}; expected (batch, patches) = "
                         f"{(b, h * w)}.")
      mask_token = self.param("mask_token", layers.logical(nn.initializers.normal(0.02),
                                                           (None, None, sh.EMBED)),
                              (1, 1, width))
      x = jnp.where(mask[..., None], mask_token.astype(x.dtype), x)
    if self.posemb == "learn":
      n_pos = h * w + int(self.cls_posemb)
      if self.has_variable("params", "pos_embedding"):
        # Read as stored: self.param would insist on this call's grid size.
        pe = nn.unbox(self.get_variable("params", "pos_embedding"))
      else:
        n_table = (self.posemb_grid ** 2 + int(self.cls_posemb) if self.posemb_grid
                   else n_pos)
        pe = self.param("pos_embedding",
                        layers.logical(nn.initializers.normal(width ** -0.5),
                                       (None, sh.LENGTH, sh.EMBED)), (1, n_table, width))
      if pe.shape[1] != n_pos:   # Another resolution than at init.
        if self.cls_posemb:
          pe = jnp.concatenate([pe[:, :1], resize_posemb(pe[:, 1:], h, w)], axis=1)
        else:
          pe = resize_posemb(pe, h, w)
    elif self.posemb == "sincos2d":
      pe = layers.posemb_sincos_2d(h, w, width)
    else:
      raise ValueError(f"Unknown posemb {self.posemb!r}; valid: learn, sincos2d.")
    if self.pool == "cls":  # Created after pos_embedding: param creation order fixes init values.
      cls = self.param("cls", layers.logical(nn.initializers.zeros, (None, None, sh.EMBED)),
                       (1, 1, width))
      cls = jnp.tile(cls, (b, 1, 1)).astype(x.dtype)
    if self.cls_posemb:
      cls = cls + pe[:, :1].astype(x.dtype)
      pe = pe[:, 1:]
    x = x + pe.astype(x.dtype)
    if keep is not None:
      if keep.ndim != 2 or keep.shape[0] != b:
        raise ValueError(f"ViT keep has shape {keep.shape}; expected (batch, kept patches) "
                         f"with batch {b}.")
      x = jnp.take_along_axis(x, keep[..., None].astype(jnp.int32), axis=1)
    if self.pool == "cls":
      x = jnp.concatenate([cls, x], axis=1)
    x = self._encode(x, d, train)
    return self._pool_and_head(x, {"tokens": x}, d)

  def _encode(self, x, d: dict, train: bool, mask=None):
    """Embedded tokens (b, n, width) -> the encoder's (optional pre-norm, dropout, blocks);
    `mask` (b, n) bool: the keys attention may read (NaFlex padding excluded)."""
    if self.pre_norm:
      x = layers.layer_norm(self.ln_eps, "pre_norm", self.dtype)(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    norm_tokens = self.final_norm and not self.norm_pooled
    return layers.Encoder(d["depth"], d["num_heads"], d["mlp_dim"], self.act, self.ln_eps,
                          self.dropout, norm_tokens, self.attention_impl, self.dtype,
                          self.remat, scan=self.scan_layers, name="encoder")(
                              x, mask=mask, train=train)

  def _pool_and_head(self, x, extras: dict, d: dict, token_mask=None):
    """Encoded tokens (b, n, width) -> (out, extras); `token_mask` (b, n) bool: the real
    tokens (NaFlex), the rest ignored by every pooling."""
    if self.pool == "cls":
      pooled = x[:, 0]
    elif self.pool == "gap":
      if token_mask is None:
        pooled = x.mean(axis=1)
      else:
        m = token_mask[..., None].astype(x.dtype)
        pooled = (x * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
    elif self.pool == "map":
      pooled = layers.MAPHead(d["num_heads"], d["mlp_dim"], self.act, self.ln_eps,
                              self.attention_impl, self.dtype, name="map_head")(
                                  x, mask=token_mask)
    elif self.pool == "first":
      pooled = x[:, 0]
    elif self.pool == "none":
      pooled = x
    else:
      raise ValueError(f"Unknown pool {self.pool!r}; valid: cls, gap, map, first, none.")
    if self.final_norm and self.norm_pooled:
      pooled = layers.layer_norm(self.ln_eps, "post_norm", self.dtype)(pooled)
    if self.rep_size:
      pooled = nn.tanh(nn.Dense(self.rep_size, dtype=self.dtype, name="pre_logits",
                                kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                                           (sh.EMBED, None)),
                                bias_init=layers.logical(nn.initializers.zeros, (None,)))(pooled))
    extras["pre_logits"] = pooled
    if self.num_classes:
      init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
      out = nn.Dense(self.num_classes, use_bias=self.head_bias, dtype=self.dtype, name="head",
                     kernel_init=layers.logical(init, (sh.EMBED, sh.CLASSES)),
                     bias_init=layers.logical(nn.initializers.zeros, (sh.CLASSES,)))(pooled)
      extras["logits"] = out
      return out, extras
    return pooled, extras

  def embed_image(self, image):
    """image (b, h, w, c) -> (b, d): the pooled features (`pre_logits`, before any head; the
    mean token with pool="none"), in inference mode. What frozen-feature probes read."""
    _, extras = self(image, train=False)
    feats = extras["pre_logits"]
    return feats.mean(axis=1) if feats.ndim == 3 else feats

  def embed_patches(self, image):
    """image (b, h, w, c) -> (b, rows * cols, width) float32: the encoder's tokens of the
    patches (the class token dropped), in inference mode. What dense probes read."""
    _, extras = self(image, train=False)
    tokens = extras["tokens"]
    return (tokens[:, 1:] if self.pool == "cls" else tokens).astype(jnp.float32)

  def _naflex(self, patches, spatial_shapes, d: dict, train: bool):
    """NaFlex: patches (b, n, p*p*c), spatial_shapes (b, 2) -> (out, extras)."""
    width, p = d["width"], d["patch_size"]
    if spatial_shapes is None and patches.ndim == 3 and self.is_initializing():
      # The params do not depend on the grids: init from a batch of patches alone.
      spatial_shapes = jnp.asarray([[1, patches.shape[1]]] * patches.shape[0], jnp.int32)
    if patches.ndim != 3 or spatial_shapes is None:
      raise ValueError("ViT NaFlex input needs patches (batch, n, patch_size^2 * channels) and "
                       f"spatial_shapes (batch, 2); got {patches.shape} and "
                       f"{None if spatial_shapes is None else spatial_shapes.shape}.")
    if spatial_shapes.shape != (patches.shape[0], 2):
      raise ValueError(f"ViT spatial_shapes has shape {spatial_shapes.shape}; expected "
                       f"(batch, 2) = {(patches.shape[0], 2)}.")
    if self.posemb != "learn" or not self.posemb_grid or self.pool in ("cls", "first"):
      raise ValueError("ViT NaFlex input needs posemb='learn' with posemb_grid set (the "
                       "table's side, e.g. 16) and pool in gap, map, none (got posemb="
                       f"{self.posemb!r}, posemb_grid={self.posemb_grid}, pool={self.pool!r}).")
    b, n, _ = patches.shape
    x = PatchLinear(width, p, self.patch_bias, self.dtype, name="embedding")(patches)
    g = self.posemb_grid
    pe = self.param("pos_embedding", layers.logical(nn.initializers.normal(width ** -0.5),
                                                    (None, sh.LENGTH, sh.EMBED)), (1, g * g, width))
    if pe.shape[1] != g * g:
      raise ValueError(f"ViT pos_embedding has {pe.shape[1]} positions; NaFlex with "
                       f"posemb_grid={g} needs {g * g}.")
    weights = naflex_posemb_weights(g, spatial_shapes, n)
    x = x + jnp.einsum("bnk,kd->bnd", weights, pe[0].astype(jnp.float32)).astype(x.dtype)
    token_mask = naflex_mask(spatial_shapes, n)
    x = self._encode(x, d, train, token_mask)
    return self._pool_and_head(x, {"tokens": x, "mask": token_mask}, d, token_mask)
