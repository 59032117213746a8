"""Fast binding (Frozen's open-ended few-shot tasks): name a query image from k examples
per class whose names are fresh nonsense words, drawn anew for every episode.

An episode (seeded by (seed, e)) draws `ways` classes of the labelled source `data`, gives
them `ways` distinct names from `names`, one query image of one of those classes from
`data`'s split, and `max(shots)` support images per class from `support_split` (default
the same split, never the query's own record). For k in `shots` the prompt holds the first
k supports of every class, in an order shuffled once per episode (so the shots nest), then
the query:

    <image>dax<|endofchunk|><image>wug<|endofchunk|> ... <image>{name}<|endofchunk|>

and each of the episode's names is scored by the log-likelihood of the query's chunk;
`<k>shot/top1` is the fraction of episodes whose best name is the query's. A name means
nothing outside its episode, so 0-shot is at chance (1 / ways) by construction.
"""

from __future__ import annotations

import numpy as np

from bigvl.data import transforms
from bigvl.data.binding import NAMES, PROMPT, check_episode_options, labels_by_class
from bigvl.data.interleaved import IMAGE
from bigvl.evaluators.context import data_label, eval_pp, eval_source
from bigvl.evaluators.in_context import chunk, chunk_score_fn, encode_prompts, query_chunk_mask
from bigvl.models.capabilities import InterleavedLM, require
from bigvl.registry import EVALUATORS


@EVALUATORS.register("binding")
class FastBinding:
  """`<k>shot/top1` over `episodes` seeded `ways`-way episodes of `data` (module docstring)."""

  def __init__(self, ctx, *, data: dict, support_split: str | None = None, ways: int = 5,
               shots=(0, 1, 2, 4, 8), episodes: int = 200, names=NAMES, prompt: str = PROMPT,
               classes=None, seed: int = 0, batch_size: int = 16, text_len: int | None = None):
    require(ctx.model, InterleavedLM, "binding")
    if ctx.tokenizer is None:
      raise ValueError("The binding evaluator needs the run's tokenizer.")
    self.ctx, self.tok = ctx, ctx.tokenizer
    self.label = data_label(data)
    self.query = eval_source(data, "binding")
    same = support_split is None
    self.support = self.query if same else eval_source(data, "binding", split=support_split)
    self.shots = tuple(sorted(int(k) for k in shots))
    if not self.shots or self.shots[0] < 0:
      raise ValueError(f"binding: shots={shots} must be non-negative shot counts.")
    # Every record is read once per split to index it by class: the same split once.
    q_by = labels_by_class(self.query)
    s_by = q_by if same else labels_by_class(self.support)
    self.classes = check_episode_options(ways, names, classes, sorted(set(q_by) & set(s_by)),
                                         f"binding on {self.label}")
    kmax = self.shots[-1]
    for c in self.classes:
      if len(s_by[c]) < kmax + same:
        raise ValueError(f"binding on {self.label}: class {c} has {len(s_by[c])} support "
                         f"examples, fewer than max(shots)={kmax}" + (" + the query" if same
                                                                      else "") + ".")
    self.ways, self.names, self.prompt = ways, tuple(names), prompt
    self.episodes, self.batch_size = episodes, batch_size
    self.text_len = text_len or ctx.text_len
    self.image_id = self.tok.piece_id(IMAGE)
    pp = transforms.build(eval_pp(data))
    self._draws = [self._draw(e, seed, q_by, s_by, same) for e in range(episodes)]
    needed_q = {d["query"] for d in self._draws}
    needed_s = {j for d in self._draws for j, _ in d["supports"]}
    self._q_img = {j: pp(self.query[j])["image"] for j in needed_q}
    self._s_img = {j: pp(self.support[j])["image"] for j in needed_s}
    self._score = chunk_score_fn(ctx.model)

  def _draw(self, e: int, seed: int, q_by: dict, s_by: dict, same: bool) -> dict:
    rng = np.random.default_rng((seed, e))
    classes = rng.choice(self.classes, self.ways, replace=False)
    names = [self.names[j] for j in rng.choice(len(self.names), self.ways, replace=False)]
    target = int(rng.integers(self.ways))
    query = int(rng.choice(q_by[int(classes[target])]))
    supports = []  # (record, way) for j < kmax shots of each way, in one shuffled order.
    for w, c in enumerate(classes):
      pool = s_by[int(c)]
      if same:
        pool = pool[pool != query]
      supports += [(int(r), w, j) for j, r in enumerate(rng.choice(pool, self.shots[-1],
                                                                    replace=False))]
    order = rng.permutation(len(supports))
    supports = [supports[i] for i in order]
    return {"names": names, "target": target, "query": query,
            "supports": [(r, w) for r, w, _ in supports],
            "shot_of": [j for _, _, j in supports]}

  def episode(self, e: int) -> dict:
    """Episode e's draw: `names` (ways,), `target` (the query's way), `query` (its record in
    the evaluated split), `supports` [(support record, way)] in prompt order for max(shots),
    `shot_of` (each support's index among its way's, < k for the k-shot prompt)."""
    return self._draws[e]

  def prompt_images(self, e: int, k: int) -> np.ndarray:
    """(ways * k + 1, h, w, c): episode e's k-shot support images in prompt order, then its
    query image."""
    _, records = self.prompt_of(e, k)
    return np.stack([self._s_img[r] for r in records]
                    + [self._q_img[self._draws[e]["query"]]])

  def prompt_of(self, e: int, k: int) -> tuple[str, list[int]]:
    """(the k-shot prefix of episode e, its support records in order)."""
    d = self._draws[e]
    picked = [(r, w) for (r, w), j in zip(d["supports"], d["shot_of"]) if j < k]
    text = "".join(chunk(self.prompt.format(d["names"][w])) for _, w in picked)
    return text, [r for r, _ in picked]

  def scores(self, params, episodes: np.ndarray, k: int) -> np.ndarray:
    """(len(episodes), ways): log-likelihood of each name's query chunk after k shots."""
    texts, images = [], []
    for e in episodes:
      prefix, _ = self.prompt_of(int(e), k)
      texts += [prefix + chunk(self.prompt.format(n)) for n in self._draws[e]["names"]]
      images.append(self.prompt_images(int(e), k))
    tokens = encode_prompts(self.tok, texts, self.text_len,
                            f"binding: a {k}-shot {self.ways}-way prompt")
    mask = query_chunk_mask(tokens, self.image_id, self.tok.pad_id)
    n = len(episodes)
    return np.asarray(self._score(params, np.stack(images), tokens.reshape(n, self.ways, -1),
                                  mask.reshape(n, self.ways, -1)))

  def run(self, params) -> dict[str, float]:
    out = {}
    targets = np.asarray([d["target"] for d in self._draws])
    for k in self.shots:
      correct = 0
      for s in range(0, self.episodes, self.batch_size):
        idx = np.arange(s, min(s + self.batch_size, self.episodes))
        correct += int((self.scores(params, idx, k).argmax(1) == targets[idx]).sum())
      out[f"{k}shot/top1"] = correct / self.episodes
    return out
