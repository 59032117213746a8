"""Image captioners: an encoder-decoder (captioning, CapPa) and CoCa.

Both expose the same methods to objectives, decoding and evaluators (call them through
`model.apply(variables, ..., method=...)`):

* `encode(image)` -> memory (b, n, decoder width): the image tokens the decoder attends to;
* `caption_logits(memory, text, parallel=False)` -> (b, l, vocab): teacher-forced logits
  predicting `text` (targets; the model shifts them right itself);
* `decode_step(prev (b, 1), memory)` -> (b, vocab) logits of the next token, with the KV
  cache in the `cache` collection (mutable; see bigvl/decoding.py);
* `embed_image(image)` -> (b, decoder width): the mean memory token (probe features).

(`capabilities.ImageCaptioner` and `ImageEmbedder`; CoCa is also an `ImageTextEmbedder`.)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from bigvl import sharding as sh
from bigvl.models import layers
from bigvl.models.decoder import TextDecoder, shift_right
from bigvl.models.two_towers import l2_normalize
from bigvl.models.vit import ViT
from bigvl.registry import MODELS, check_kwargs


def _vit_tokens(opts: dict, dtype, what: str) -> ViT:
  opts = dict(opts or {})
  check_kwargs(ViT, opts, f"config.model.{what}")
  if opts.get("pool", "none") != "none":
    raise ValueError(f"config.model.{what}.pool={opts['pool']!r}: a captioner's image encoder "
                     "gives all its tokens to the decoder; leave pool unset (none).")
  opts["pool"] = "none"
  return ViT(**opts, dtype=dtype)


def _dense(features: int, dtype, name: str, bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=bias, dtype=dtype, name=name,
                  kernel_init=layers.logical(nn.initializers.lecun_normal(), (sh.EMBED, None)),
                  bias_init=layers.logical(nn.initializers.zeros, (None,)))


class _CaptionMethods:
  """encode / caption_logits / decode_step on top of `self.img`, `self.dec`, `self._memory`."""

  def encode(self, image, train: bool = False):
    tokens, _ = self.img(image, train=train)
    return self._memory(tokens)

  def caption_logits(self, memory, text, parallel: bool = False, train: bool = False):
    logits, _ = self.dec(shift_right(text, self.dec.pad_id), memory, parallel=parallel,
                         train=train)
    return logits

  def decode_step(self, prev, memory):
    logits, _ = self.dec(prev, memory, decode=True)
    return logits[:, -1]

  def embed_image(self, image):
    """image (b, h, w, c) -> (b, d_dec): the mean of the image tokens the decoder reads
    (`encode`), in inference mode. What frozen-feature probes read."""
    return self.encode(image).mean(axis=1)


@MODELS.register("captioner")
class Captioner(_CaptionMethods, nn.Module):
  """ViT encoder + TextDecoder. (image (b,h,w,c), text (b,l)) -> logits (b, l, vocab).

  `parallel=True`: CapPa's parallel prediction (masked inputs, no causal mask).
  """
  image: dict | None = None          # ViT options (its tokens feed the decoder).
  decoder: dict | None = None        # TextDecoder options.
  dtype: Any = jnp.float32

  def setup(self):
    check_kwargs(TextDecoder, dict(self.decoder or {}), "config.model.decoder")
    self.img = _vit_tokens(self.image, self.dtype, "image")
    self.dec = TextDecoder(**dict(self.decoder or {}), dtype=self.dtype)
    self.mem_proj = _dense(self.dec.dims()["width"], self.dtype, "mem_proj")

  def _memory(self, tokens):
    # Always projected: the decoder's cross-attention gets its own view of the image tokens.
    return self.mem_proj(tokens)

  def __call__(self, image, text, *, parallel: bool = False, train: bool = False):
    return self.caption_logits(self.encode(image, train=train), text, parallel=parallel,
                               train=train)


@MODELS.register("coca")
class CoCa(_CaptionMethods, nn.Module):
  """Contrastive captioner. (image | None, text | None) -> (zimg, ztxt, extras), like TwoTowers,
  so the contrastive objectives and zero-shot evaluation apply unchanged; with both inputs
  `extras["logits"]` (b, l, vocab) are the captioning logits of `text`.

  The image embedding is an attentional (MAP) pooling of the image tokens; the text embedding
  is the decoder's CLS token after its `unimodal_depth` causal text-only layers.
  """
  image: dict | None = None
  decoder: dict | None = None        # TextDecoder options; unimodal_depth > 0; cls_token is set.
  embed_dim: int = 512
  temperature_init: float = 1 / 0.07
  bias_init: float | None = None     # Set for a sigmoid (SigLIP) contrastive loss.
  dtype: Any = jnp.float32

  def setup(self):
    opts = dict(self.decoder or {})
    check_kwargs(TextDecoder, opts, "config.model.decoder")
    opts["cls_token"] = True
    self.img = _vit_tokens(self.image, self.dtype, "image")
    self.dec = TextDecoder(**opts, dtype=self.dtype)
    if self.dec.unimodal_depth < 1:
      raise ValueError("CoCa needs config.model.decoder.unimodal_depth >= 1 (text-only layers "
                       "that give the contrastive text embedding).")
    d = self.img.dims()
    self.img_pool = layers.MAPHead(d["num_heads"], d["mlp_dim"], dtype=self.dtype)
    self.img_proj = _dense(self.embed_dim, self.dtype, "img_proj", bias=False)
    self.txt_proj = _dense(self.embed_dim, self.dtype, "txt_proj", bias=False)
    self.mem_proj = _dense(self.dec.dims()["width"], self.dtype, "mem_proj")
    self.log_t = self.param("t", nn.initializers.constant(np.log(self.temperature_init)), (1,))
    if self.bias_init is not None:
      self.b = self.param("b", nn.initializers.constant(self.bias_init), (1,))

  def _memory(self, tokens):
    return self.mem_proj(tokens)

  def __call__(self, image=None, text=None, *, train: bool = False):
    extras: dict[str, Any] = {"t": jnp.exp(self.log_t[0])}
    if self.bias_init is not None:
      extras["b"] = self.b[0]
    zimg = ztxt = memory = None
    if image is not None:
      tokens, _ = self.img(image, train=train)
      zimg = l2_normalize(self.img_proj(self.img_pool(tokens)).astype(jnp.float32))
      memory = self._memory(tokens)
    if text is not None:
      inputs = shift_right(text, self.dec.pad_id)
      logits, ex = self.dec(inputs, memory, unimodal_only=memory is None, train=train)
      ztxt = l2_normalize(self.txt_proj(ex["cls"]).astype(jnp.float32))
      if logits is not None:
        extras["logits"] = logits
    return zimg, ztxt, extras

  def embed_image_joint(self, image):
    """image (b, h, w, c) -> (b, embed_dim) float32 L2-normalised contrastive embedding."""
    return self(image, None, train=False)[0]

  def embed_text(self, text):
    """text (b, L) int32 -> (b, embed_dim) float32 L2-normalised contrastive embedding."""
    return self(None, text, train=False)[1]
