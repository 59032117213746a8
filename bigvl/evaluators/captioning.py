"""Evaluators for captioners: generated-caption metrics, and zero-shot classification by
scoring each class's prompt with the caption likelihood (as CapPa evaluates).

All need a model with the captioner methods (`capabilities.ImageCaptioner`: `captioner`,
`coca`; see bigvl/models/captioner.py).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bigvl import decoding
from bigvl import sharding as sh
from bigvl.data import loader, transforms
from bigvl.evaluators import caption_metrics
from bigvl.evaluators.class_names import as_class_names, as_templates
from bigvl.evaluators.context import data_label, eval_batch_size, eval_pp, eval_source
from bigvl.evaluators.images import to_rgb_uint8
from bigvl.models.capabilities import ImageCaptioner, require
from bigvl.registry import EVALUATORS


def _batches(ctx, source, pp, batch_size, keys=("image",)):
  """Global batches of `keys`, `index`, `mask` over the whole source."""
  for batch in loader.eval_batches(loader.IndexedSource(source), pp,
                                   batch_size // ctx.process_count, ctx.process_index,
                                   ctx.process_count):
    yield sh.to_global_batch({**{k: batch[k] for k in keys}, "index": batch["_index"],
                              "mask": batch["_mask"]}, ctx.mesh, ctx.rules)


@EVALUATORS.register("captioning")
class CaptioningEval:
  """Generates a caption for every image of a source and scores it against the source's
  captions: `exact_match` (the caption equals one of them, up to case and punctuation),
  `bleu4` and `cider` (CIDEr-D), as in the COCO caption evaluation."""

  def __init__(self, ctx, *, data: dict, decode: str = "greedy", beam_size: int = 4,
               max_len: int | None = None, batch_size: int = 256, show: int = 3,
               num_images: int = 6, value_range=(-1.0, 1.0)):
    require(ctx.model, ImageCaptioner, "captioning")
    if decode not in ("greedy", "beam"):
      raise ValueError(f"captioning eval: decode={decode!r}; valid: greedy, beam.")
    self.ctx, self.decode, self.beam_size, self.show = ctx, decode, beam_size, show
    self.num_images, self.value_range, self._grid = num_images, tuple(value_range), None
    self.max_len = max_len or ctx.text_len
    self.source = eval_source(data, "captioning")
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.batch_size = eval_batch_size(ctx, batch_size)
    model = ctx.model
    self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))

  def generate(self, params) -> dict[int, str]:
    """{example index: generated caption} over the whole source."""
    tok, model = self.ctx.tokenizer, self.ctx.model
    out = {}
    for g in _batches(self.ctx, self.source, self.pp, self.batch_size):
      memory = self._encode(params, g["image"])
      if self.decode == "greedy":
        ids, _ = decoding.greedy(model, params, memory, max_len=self.max_len, eos_id=tok.eos_id,
                                 pad_id=tok.pad_id)
      else:
        ids, _ = decoding.beam_search(model, params, memory, beam_size=self.beam_size,
                                      max_len=self.max_len, eos_id=tok.eos_id, pad_id=tok.pad_id)
      ids, index, mask = (sh.to_host(x) for x in (ids, g["index"], g["mask"]))
      for i, seq in zip(index[mask], ids[mask]):
        out[int(i)] = tok.decode(seq)
    return out

  def run(self, params) -> dict[str, float]:
    generated = self.generate(params)
    order = sorted(generated)
    candidates = [generated[i] for i in order]
    references = [list(self.source[i]["texts"]) for i in order]
    norm = lambda t: caption_metrics.tokenize(t)
    exact = np.mean([any(norm(c) == norm(r) for r in refs)
                     for c, refs in zip(candidates, references)])
    scores = caption_metrics.bleu(candidates, references)
    if self.show and self.ctx.process_index == 0:
      for c, refs in list(zip(candidates, references))[:self.show]:
        print(f"  caption: {c!r}  reference: {refs[0]!r}", flush=True)
    if self.num_images:
      shown = order[:self.num_images]
      images = np.stack([self.pp(self.source[i])["image"] for i in shown])
      self._grid = captioned_grid(images, [generated[i] for i in shown], *self.value_range)
    return {"exact_match": float(exact), "bleu4": scores["bleu4"],
            "cider": caption_metrics.cider_d(candidates, references)}

  def images(self) -> dict[str, np.ndarray]:
    """{"captions": uint8 (H, W, 3)}: the first `num_images` images of the last run, each
    with its generated caption underneath (TensorBoard's IMAGES tab)."""
    return {} if self._grid is None else {"captions": self._grid}


def captioned_grid(images, captions, vmin: float, vmax: float, scale: int = 4,
                   width_chars: int = 24) -> np.ndarray:
  """images (n, h, w, c) in [vmin, vmax] side by side, each above its wrapped caption."""
  import textwrap
  from PIL import Image, ImageDraw
  n, h, w, _ = images.shape
  tile_w = max(w * scale, 6 * width_chars + 4)
  lines = [textwrap.wrap(t, width_chars)[:4] or [""] for t in captions]
  band = 12 * max(len(l) for l in lines) + 4
  canvas = Image.new("RGB", (n * (tile_w + 2), h * scale + band), "white")
  draw = ImageDraw.Draw(canvas)
  for i, (img, text) in enumerate(zip(images, lines)):
    tile = Image.fromarray(to_rgb_uint8(img, vmin, vmax, scale))
    left = i * (tile_w + 2)
    canvas.paste(tile, (left + (tile_w - w * scale) // 2, 0))
    draw.multiline_text((left + 2, h * scale + 2), "\n".join(text), fill="black", spacing=2)
  return np.asarray(canvas)


@EVALUATORS.register("scoring_zeroshot")
class ScoringZeroShot:
  """Zero-shot classification with a captioner: each class is scored by the log-likelihood
  of its prompts given the image (the mean over `templates`), the best class wins."""

  def __init__(self, ctx, *, data: dict, class_names=None, templates=None,
               batch_size: int = 256):
    require(ctx.model, ImageCaptioner, "scoring_zeroshot")
    self.ctx = ctx
    self.source = eval_source(data, "scoring_zeroshot")
    # A string names a shipped list ("imagenet", "clip80"), as for `zeroshot`.
    self.class_names = list(as_class_names(class_names)
                            or getattr(self.source, "class_names", None) or [])
    self.templates = list(as_templates(templates)
                          or getattr(self.source, "templates", None) or ["{}"])
    if not self.class_names:
      raise ValueError(f"scoring_zeroshot on {data_label(data)}: the source has no class_names; "
                       "set them in the eval config (a list, or a list name like 'imagenet').")
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.batch_size = eval_batch_size(ctx, batch_size)
    model, tok = ctx.model, ctx.tokenizer
    prompts = [t.format(c) for c in self.class_names for t in self.templates]
    self.prompts = tok.encode(prompts, ctx.text_len)
    self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))
    self._score = jax.jit(lambda p, m, t: decoding.sequence_logprob(
        model, p, m, t, eos_id=tok.eos_id, pad_id=tok.pad_id))

  def run(self, params) -> dict[str, float]:
    correct = total = 0
    replicated = NamedSharding(self.ctx.mesh, P())
    for g in _batches(self.ctx, self.source, self.pp, self.batch_size):
      memory = self._encode(params, g["image"])
      b = memory.shape[0]
      scores = []
      for prompt in self.prompts:
        tokens = jax.make_array_from_process_local_data(
            replicated, np.repeat(prompt[None], b, axis=0))
        scores.append(sh.to_host(self._score(params, memory, tokens)))
      scores = np.stack(scores, 1).reshape(b, len(self.class_names), len(self.templates))
      pred = scores.mean(-1).argmax(-1)
      index, mask = sh.to_host(g["index"]), sh.to_host(g["mask"])
      labels = np.array([int(self.source[int(i)]["label"]) for i in index[mask]])
      correct += int((pred[mask] == labels).sum())
      total += int(mask.sum())
    return {"top1": correct / total}


@EVALUATORS.register("perplexity")
class Perplexity:
  """Teacher-forced perplexity of a source's captions given their images:
  exp(total negative log-likelihood / total tokens), over each caption's tokens up to and
  including its EOS (the tokens the captioning loss counts). The pp must give `image` and
  a tokenized `text` (e.g. `...|choose_text|tokenize`, the first caption when evaluating)."""

  def __init__(self, ctx, *, data: dict, batch_size: int = 256):
    require(ctx.model, ImageCaptioner, "perplexity")
    self.ctx = ctx
    self.source = eval_source(data, "perplexity")
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.batch_size = eval_batch_size(ctx, batch_size)
    model, tok = ctx.model, ctx.tokenizer

    def nll_and_count(p, images, tokens):
      memory = model.apply({"params": p}, images, method="encode")
      logp = decoding.sequence_logprob(model, p, memory, tokens, eos_id=tok.eos_id,
                                       pad_id=tok.pad_id)
      return -logp, decoding.token_mask(tokens, tok.eos_id).sum(-1)
    self._nll = jax.jit(nll_and_count)

  def run(self, params) -> dict[str, float]:
    nll = count = 0.0
    for g in _batches(self.ctx, self.source, self.pp, self.batch_size, ("image", "text")):
      b_nll, b_count = (sh.to_host(x) for x in self._nll(params, g["image"], g["text"]))
      mask = sh.to_host(g["mask"])
      # Summed in float64 on the host, in example order: the same on any device count.
      nll += float(np.sum(b_nll[mask], dtype=np.float64))
      count += float(np.sum(b_count[mask], dtype=np.float64))
    return {"perplexity": float(np.exp(nll / count)), "nll_per_token": nll / count}
