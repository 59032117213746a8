"""In-context (few-shot) evaluation of a Flamingo model from interleaved prompts.

For a query image with label y and k support examples (drawn from `support_split`):

    <image>{prompt(s_1)}<|endofchunk|> ... <image>{prompt(s_k)}<|endofchunk|><image>{prompt(c)}<|endofchunk|>

Classification scores every class c by the log-likelihood of the query chunk (the tokens
after the last `<image>`, through EOS) and predicts the best: `<k>shot/top1`. The supports
are the same for every class, so only the query chunk can tell the classes apart.
Captioning (`captioning=True`) greedily generates the query chunk after its `<image>`
and compares it with `prompt(y)`: `<k>shot/caption_exact`, and `<k>shot/caption_label`,
the fraction whose only class name is y's (any wording).

The images of a query are encoded once (`encode_media`) and reused for every class.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bigvl.data import transforms
from bigvl.data.interleaved import END_OF_CHUNK, IMAGE
from bigvl.evaluators.context import data_label, eval_pp, eval_source
from bigvl.models.capabilities import InterleavedLM, require
from bigvl.registry import EVALUATORS


def chunk(caption: str) -> str:
  return f"{IMAGE}{caption}{END_OF_CHUNK}"


def query_chunk_mask(tokens: np.ndarray, image_id: int, pad_id: int) -> np.ndarray:
  """(n, l) ids -> (n, l) float: 1 at targets after the last image marker that are not
  padding (the query chunk, EOS included); position t of the mask is target t."""
  is_img = tokens == image_id
  last = np.where(is_img.any(1), tokens.shape[1] - 1 - np.argmax(is_img[:, ::-1], 1), -1)
  pos = np.arange(tokens.shape[1])[None]
  return ((pos > last[:, None]) & (tokens != pad_id)).astype(np.float32)


def chunk_score_fn(model):
  """A jitted fn(params, images (b, m, h, w, c), tokens (b, c, l), mask (b, c, l)) -> (b, c):
  for each of b prompts' m images and c candidate texts, the sum of log p over the targets
  where `mask` is 1 (`query_chunk_mask`). The images are encoded once per prompt."""

  @jax.jit
  def score(params, images, tokens, mask):
    b, c, l = tokens.shape
    media = model.apply({"params": params}, images, method="encode_media")
    media = jnp.repeat(media, c, axis=0)
    logits = model.apply({"params": params}, media, tokens.reshape(b * c, l),
                         method="lm_logits")
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    tgt = tokens.reshape(b * c, l)[:, 1:]
    lp = jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    return (lp * mask.reshape(b * c, l)[:, 1:]).sum(-1).reshape(b, c)
  return score


def encode_prompts(tok, texts: list[str], text_len: int, what: str) -> np.ndarray:
  """Prompts -> (n, text_len) int32 ids; ValueError naming `what` if one does not fit."""
  ids = tok.encode(texts, text_len)
  if (ids == tok.eos_id).sum(1).min() == 0 or any(
      len(p) + 1 > text_len for p in tok.sp.encode(texts)):
    raise ValueError(f"{what} does not fit text_len={text_len} tokens; raise the "
                     "evaluator's text_len (and the LM's max_len).")
  return ids


@EVALUATORS.register("in_context")
class InContext:
  """k-shot classification (and captioning) of the images of `data` (a data config; the
  split evaluated, default "test") for each k in `shots`, with supports drawn from
  `support_split` of the same data."""

  def __init__(self, ctx, *, data: dict, support_split: str = "train", shots=(0, 4),
               prompt: str = "a photo of the digit {}.", max_examples: int | None = None,
               batch_size: int = 32, seed: int = 0, captioning: bool = False,
               max_caption_len: int = 24, text_len: int | None = None):
    require(ctx.model, InterleavedLM, "in_context")
    if ctx.tokenizer is None:
      raise ValueError("The in_context evaluator needs the run's tokenizer.")
    self.ctx, self.tok = ctx, ctx.tokenizer
    self.image_id = self.tok.piece_id(IMAGE)
    self.end_id = self.tok.piece_id(END_OF_CHUNK)
    self.query = eval_source(data, "in_context")
    self.support = eval_source(data, "in_context", split=support_split)
    if not hasattr(self.query, "class_names"):
      raise ValueError(f"in_context: source {data_label(data)} has no class_names.")
    self.class_names = list(self.query.class_names)
    self.shots = tuple(int(k) for k in shots)
    self.prompt, self.seed, self.captioning = prompt, seed, captioning
    self.max_caption_len = max_caption_len
    self.batch_size = batch_size
    self.text_len = text_len or ctx.text_len
    self.pp = transforms.build(eval_pp(data))
    n = len(self.query) if max_examples is None else min(max_examples, len(self.query))
    self.n = n
    self._query_images = np.stack([self.pp(self.query[i])["image"] for i in range(n)])
    self._labels = np.asarray([int(self.query[i]["label"]) for i in range(n)])
    kmax = max(self.shots, default=0)
    rng = np.random.default_rng(seed)
    # One draw of kmax supports per query; k shots use its first k, so the shots nest.
    self._support_idx = np.stack([rng.choice(len(self.support), kmax, replace=False)
                                  for _ in range(n)]) if kmax else np.zeros((n, 0), int)
    needed = np.unique(self._support_idx)
    self._support_images = {int(j): self.pp(self.support[int(j)])["image"] for j in needed}
    self._support_labels = {int(j): int(self.support[int(j)]["label"]) for j in needed}
    self._fns = {}

  # ----------------------------------------------------------------------------------------

  def encode_prompts(self, texts: list[str]) -> np.ndarray:
    """Prompts -> (n, text_len) int32 ids; raises if one does not fit `text_len`."""
    return encode_prompts(self.tok, texts, self.text_len,
                          f"in_context: a {max(self.shots)}-shot prompt")

  def support_indices(self, i: int, k: int) -> np.ndarray:
    """(k,) indices into `self.support` of query `i`'s supports: the first k of one draw of
    max(shots), so the shots nest."""
    return self._support_idx[i, :k]

  def prefix(self, i: int, k: int) -> str:
    """The k support chunks that precede query `i`'s own chunk in its prompt."""
    return "".join(chunk(self.prompt.format(self.class_names[self._support_labels[int(j)]]))
                   for j in self._support_idx[i, :k])

  def images(self, idx: np.ndarray, k: int) -> np.ndarray:
    """(len(idx), k + 1, h, w, c): the k support images of each query in `idx`, then its own."""
    return np.stack([np.stack([self._support_images[int(j)] for j in self._support_idx[i, :k]]
                              + [self._query_images[i]]) for i in idx])

  def _score_fn(self):
    if "score" not in self._fns:
      self._fns["score"] = chunk_score_fn(self.ctx.model)
    return self._fns["score"]

  def _next_fn(self):
    if "next" not in self._fns:
      model = self.ctx.model

      @jax.jit
      def next_token(params, media, tokens, pos):
        logits = model.apply({"params": params}, media, tokens, method="lm_logits")
        return jnp.argmax(logits[jnp.arange(tokens.shape[0]), pos], -1)

      @jax.jit
      def encode(params, images):
        return model.apply({"params": params}, images, method="encode_media")
      self._fns["next"], self._fns["encode"] = next_token, encode
    return self._fns["encode"], self._fns["next"]

  def class_scores(self, params, idx: np.ndarray, k: int) -> np.ndarray:
    """(len(idx), n_classes) float: log-likelihood of each class's query chunk (through EOS)
    after the k-shot prefix of each query in `idx`."""
    texts = [self.prefix(i, k) + chunk(self.prompt.format(c)) for i in idx
             for c in self.class_names]
    tokens = self.encode_prompts(texts)
    mask = query_chunk_mask(tokens, self.image_id, self.tok.pad_id)
    c = len(self.class_names)
    return np.asarray(self._score_fn()(params, self.images(idx, k),
                                       tokens.reshape(len(idx), c, -1),
                                       mask.reshape(len(idx), c, -1)))

  def classify(self, params, k: int) -> float:
    correct = 0
    for s in range(0, self.n, self.batch_size):
      idx = np.arange(s, min(s + self.batch_size, self.n))
      scores = self.class_scores(params, idx, k)
      correct += int((scores.argmax(1) == self._labels[idx]).sum())
    return correct / self.n

  def caption(self, params, k: int) -> tuple[float, float]:
    """(exact match with prompt(label), fraction whose only class name is the label)."""
    encode, next_token = self._next_fn()
    exact = named = 0
    for s in range(0, self.n, self.batch_size):
      idx = np.arange(s, min(s + self.batch_size, self.n))
      prefixes = [self.prefix(i, k) + IMAGE for i in idx]
      ids = [list(p) for p in self.tok.sp.encode(prefixes)]
      tokens = np.full((len(idx), self.text_len), self.tok.pad_id, np.int32)
      for r, p in enumerate(ids):
        if len(p) >= self.text_len:
          raise ValueError(f"in_context: a {k}-shot prompt does not fit text_len="
                           f"{self.text_len}; raise the evaluator's text_len.")
        tokens[r, :len(p)] = p
      pos = np.asarray([len(p) - 1 for p in ids])
      stop = np.minimum(pos + self.max_caption_len, self.text_len - 1)
      done = np.zeros(len(idx), bool)
      media = encode(params, self.images(idx, k))
      while not done.all():
        nxt = np.asarray(next_token(params, media, tokens, pos))
        pos = pos + 1
        live = ~done & (pos <= stop)
        tokens[np.arange(len(idx))[live], pos[live]] = nxt[live]
        done |= ~live | (nxt == self.end_id) | (nxt == self.tok.eos_id)
        pos = np.minimum(pos, self.text_len - 1)
      for r, i in enumerate(idx):
        row = list(tokens[r, len(ids[r]):])
        cut = [j for j, t in enumerate(row) if t in (self.end_id, self.tok.eos_id)]
        text = self.tok.sp.decode([int(t) for t in row[:cut[0] if cut else len(row)]
                                   if t != self.tok.pad_id])
        label = self.class_names[self._labels[i]]
        exact += text.strip() == self.prompt.format(label)
        words = set(text.replace(".", " ").replace(",", " ").split())
        named += [c for c in self.class_names if c in words] == [label]
    return exact / self.n, named / self.n

  def run(self, params) -> dict[str, float]:
    out = {}
    for k in self.shots:
      out[f"{k}shot/top1"] = self.classify(params, k)
      if self.captioning:
        out[f"{k}shot/caption_exact"], out[f"{k}shot/caption_label"] = self.caption(params, k)
    return out
