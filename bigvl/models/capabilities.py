"""What evaluators (and decoding) ask of a model: one `typing.Protocol` per capability.

A model has a capability when its class defines the protocol's methods; an evaluator checks
that once, when it is built, with `require(model, Protocol, "evaluator name")`, and then calls
the methods through `model.apply({"params": params}, ..., method="name")`. No evaluator looks
at a model's class, fields or output shapes.

Shapes: `b` batch, `h, w, c` image height, width, channels, `L` text length, `d` an
embedding width, `n` image tokens, `vocab` the vocabulary. Every method is called in
inference mode (no dropout) unless it takes `train=` and is given `train=True`.

Protocol (methods): models that have it -> evaluators that need it.

  ImageEmbedder (embed_image): vit, two_towers, siglip2, captioner, coca, mae, simmim, dino
      -> fewshot, knn
  ImageTextEmbedder (embed_image_joint, embed_text): two_towers, siglip2, coca
      -> zeroshot, retrieval
  PatchEmbedder (embed_patches): vit, two_towers, siglip2 -> dense_probe
  ImageCaptioner (encode, caption_logits, decode_step): captioner, coca
      -> captioning, scoring_zeroshot, perplexity (and bigvl/decoding.py)
  InterleavedLM (encode_media, lm_logits): flamingo -> in_context
"""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

import jax


@runtime_checkable
class ImageEmbedder(Protocol):
  """A model with one feature vector per image: what frozen-feature probes fit."""

  def embed_image(self, image: jax.Array) -> jax.Array:
    """image (b, h, w, c) float -> features (b, d), inference mode.

    The features a linear probe or a kNN classifier reads: ViT, its pooled features
    (`pre_logits`; the mean token with pool="none"); TwoTowers, the L2-normalised image
    embedding; Captioner / CoCa, the mean of the image tokens the decoder reads (`encode`);
    MAE / SimMIM, the mean encoder token; DINO, the teacher backbone's pooled features.
    """
    ...


@runtime_checkable
class PatchEmbedder(Protocol):
  """A model with one feature vector per image patch: what dense probes fit."""

  def embed_patches(self, image: jax.Array) -> jax.Array:
    """image (b, h, w, c) float -> (b, rows * cols, d) float32, the image tower's tokens of
    the patches in row-major order (no class token), inference mode."""
    ...


@runtime_checkable
class TextEmbedder(Protocol):
  """A model with one embedding per text."""

  def embed_text(self, text: jax.Array) -> jax.Array:
    """text (b, L) int32 token ids -> (b, d) float32 L2-normalised embedding, inference
    mode; for an `ImageTextEmbedder`, in the space `embed_image_joint` maps images to."""
    ...


@runtime_checkable
class ImageTextEmbedder(TextEmbedder, Protocol):
  """Images and texts embedded in one space, compared by cosine similarity (CLIP, SigLIP,
  CoCa): what zero-shot classification and retrieval rank with."""

  def embed_image_joint(self, image: jax.Array) -> jax.Array:
    """image (b, h, w, c) float -> (b, d) float32 L2-normalised embedding in the space of
    `embed_text` (TwoTowers: the same as `embed_image`; CoCa: the contrastive embedding)."""
    ...


@runtime_checkable
class ImageCaptioner(Protocol):
  """An image encoder with a text decoder reading its tokens (captioner / CapPa, CoCa)."""

  def encode(self, image: jax.Array, train: bool = False) -> jax.Array:
    """image (b, h, w, c) -> memory (b, n, d_dec): the image tokens the decoder attends to."""
    ...

  def caption_logits(self, memory: jax.Array, text: jax.Array, parallel: bool = False,
                     train: bool = False) -> jax.Array:
    """memory (b, n, d_dec), text (b, L) int32 targets -> (b, L, vocab) teacher-forced logits:
    position t predicts text[:, t] (the model shifts `text` right itself, starting from its
    pad id). `parallel=True`: CapPa's parallel prediction (no causal mask, masked inputs)."""
    ...

  def decode_step(self, prev: jax.Array, memory: jax.Array) -> jax.Array:
    """prev (b, 1) int32, the last token, memory (b, n, d_dec) -> (b, vocab) logits of the
    next token. Reads and advances the KV cache in the mutable `cache` collection
    (bigvl/decoding.py creates it with `init_cache` and applies with `mutable=["cache"]`)."""
    ...


@runtime_checkable
class InterleavedLM(Protocol):
  """A language model over text interleaved with images (Flamingo)."""

  def encode_media(self, images: jax.Array, train: bool = False) -> jax.Array:
    """images (b, m, h, w, c), or (b, m, T, h, w, c) for clips of T frames -> media
    (b, m, n, d_vis): each image's resampled tokens, computed once per prompt set."""
    ...

  def lm_logits(self, media: jax.Array, tokens: jax.Array, train: bool = False) -> jax.Array:
    """media (b, m, n, d_vis) from `encode_media`, tokens (b, L) int32 with an image marker
    where each image goes -> (b, L, vocab) float32 logits; position t predicts token t + 1."""
    ...


def methods(protocol) -> dict[str, str]:
  """{method name: "name(required args)"} of a protocol, its bases' included, in order."""
  out = {}
  for cls in reversed(protocol.__mro__):
    if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
      continue
    for name, fn in vars(cls).items():
      if name.startswith("_") or not callable(fn):
        continue
      params = [p.name for p in list(inspect.signature(fn).parameters.values())[1:]
                if p.default is p.empty]
      out[name] = f"{name}({', '.join(params)})"
  return out


def missing(model, protocol) -> list[str]:
  """The protocol's methods `model` does not have."""
  return [name for name in methods(protocol) if not callable(getattr(model, name, None))]


def require(model, protocol, evaluator: str) -> None:
  """Raises a one-line ValueError naming `evaluator`, the model's class and what it lacks
  unless `model` has every method of `protocol`."""
  if isinstance(model, protocol):
    return
  sigs, lacking = methods(protocol), missing(model, protocol)
  need = list(sigs.values())
  need = need[0] if len(need) == 1 else ", ".join(need[:-1]) + " and " + need[-1]
  what = "none" if len(sigs) == 1 else "no " + ", ".join(lacking)
  raise ValueError(f"evaluator {evaluator!r} needs a model with {need}; "
                   f"{type(model).__name__} has {what}")
