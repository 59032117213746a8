"""Fast-binding episodes (Frozen's open-ended few-shot tasks): fresh names for image classes.

Each record is a sequence of `length` examples of an inner labelled source. Its `ways`
classes, drawn per record, get `ways` distinct nonsense names from `names`, also drawn per
record; every example's caption is `prompt.format(name of its class)`. A name means nothing
outside its own sequence, so the only way to predict the caption of an image is to find an
earlier image of the same class in the sequence and copy its name: the task in-context
learning papers train and test. The records feed the same pp as `interleaved`:

    each_image('resize(16)|value_range(-1, 1)')|interleave_text|tokenize|keep('images', 'text')

Record i is drawn by a generator seeded with (seed, i): the same on every read and host.
`classes` restricts the classes drawn from (to hold some out of training).

`keys=True` makes the text-only sequences a language model learns the skill from: each
way's captions start with a key word drawn per sequence (`"reddax"`), and the pp drops the
image marker (`interleave_text(image='')`), so the key sits where Flamingo's `<image>`
will: `red dax <|endofchunk|> blue wug <|endofchunk|> red ...`. `min_length` draws each
record's length log-uniformly in [min_length, length]: an LM finds the copy skill within a
few hundred steps on short sequences and not within thousands on long ones only
(docs/flamingo.md), while the long ones teach it the later positions.
"""

from __future__ import annotations

import numpy as np

from bigvl.data.interleaved import END_OF_CHUNK, IMAGE
from bigvl.registry import SOURCES

# Nonsense words in the style of Frozen's fast-binding tasks ("dax", "blicket"): short,
# pronounceable, no English word among them, so that an LM trained here knows no meaning
# for any.
NAMES = ("dax", "blicket", "wug", "zorp", "fep", "tove", "kiki", "bouba", "glim", "mip",
         "lorp", "nard", "quib", "sarn", "tufa", "vek", "yim", "zub", "pell", "rix")
PROMPT = "{}"
# Stand-ins for the pictures in a text-only sequence (`keys=True`): each way's chunks start
# with the way's key word, drawn per sequence, so an LM trained on the text learns to find
# the earlier chunk with the same key and copy the name after it (an induction head) -- the
# skill a vision bridge then drives with images in the keys' place.
KEYS = ("red", "blue", "green", "gold", "pink", "grey", "brown", "black", "white", "teal",
        "amber", "coral", "olive", "navy", "ivory", "lime", "plum", "rust", "sand", "jade")


def labels_by_class(source) -> dict[int, np.ndarray]:
  """{label: indices of `source`'s records with that label}, for a labelled source."""
  labels = np.asarray([int(source[i]["label"]) for i in range(len(source))])
  return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def check_episode_options(ways: int, names, classes, available: list[int], where: str) -> list:
  """The classes episodes draw from; ValueError naming `where` when `ways` cannot be met."""
  classes = sorted(int(c) for c in (classes if classes is not None else available))
  missing = sorted(set(classes) - set(available))
  if missing:
    raise ValueError(f"{where}: classes {missing} have no example in the source "
                     f"(it has {available}).")
  if ways < 2:
    raise ValueError(f"{where}: ways={ways} must be >= 2 (one class needs no binding).")
  if ways > len(classes):
    raise ValueError(f"{where}: ways={ways} but only {len(classes)} classes to draw from; "
                     "lower ways or allow more classes.")
  if ways > len(set(names)):
    raise ValueError(f"{where}: ways={ways} but only {len(set(names))} distinct names; give "
                     "more names.")
  return classes


@SOURCES.register("binding")
class Binding:
  """`size` sequences of `length` examples of `inner` (a labelled source config), each
  sequence with `ways` classes renamed by fresh nonsense names."""

  def __init__(self, inner: dict, ways: int = 5, length: int = 41, size: int = 50_000,
               names: tuple[str, ...] | list[str] = NAMES, prompt: str = PROMPT,
               classes: tuple[int, ...] | list[int] | None = None, seed: int = 0,
               keys: bool = False, min_length: int | None = None):
    self.inner = SOURCES.build_from_config(inner, where="the binding source's inner")
    self.by_class = labels_by_class(self.inner)
    self.classes = check_episode_options(ways, names, classes, sorted(self.by_class),
                                         "binding source")
    if length < 1:
      raise ValueError(f"binding source: length={length} must be >= 1.")
    self.min_length = length if min_length is None else int(min_length)
    if not 1 <= self.min_length <= length:
      raise ValueError(f"binding source: min_length={min_length} must be in [1, length="
                       f"{length}].")
    if self.min_length < length and not keys:
      raise ValueError("binding source: min_length < length needs keys=True (text only): "
                       "sequences with different numbers of images do not batch.")
    if "{}" not in prompt:
      raise ValueError(f"binding source: prompt {prompt!r} needs a {{}} for the name.")
    self.ways, self.length, self.size = ways, length, size
    self.names, self.prompt, self.seed = tuple(names), prompt, seed
    self.keys = KEYS if keys else None
    if keys and ways > len(KEYS):
      raise ValueError(f"binding source: ways={ways} with keys=True; at most {len(KEYS)}.")

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.size:
      raise IndexError(i)
    rng = np.random.default_rng((self.seed, i))
    classes = rng.choice(self.classes, self.ways, replace=False)
    names = rng.choice(len(self.names), self.ways, replace=False)
    n = self.length
    if self.min_length < n:  # Log-uniform: as many sequences of 2-4 as of 10-20 examples.
      n = int(round(np.exp(rng.uniform(np.log(self.min_length), np.log(n)))))
    which = rng.integers(self.ways, size=n)  # Each example's class, of the ways.
    exs = [self.inner[int(rng.choice(self.by_class[int(classes[w])]))] for w in which]
    captions = [self.prompt.format(self.names[names[w]]) for w in which]
    if self.keys is not None:
      keys = rng.choice(len(self.keys), self.ways, replace=False)
      captions = [f"{self.keys[keys[w]]}{c}" for w, c in zip(which, captions)]
    return {"images": [ex["image"] for ex in exs], "texts": [(c,) for c in captions],
            "labels": np.asarray(which, np.int32),  # The way of each example, 0 .. ways-1.
            "classes": np.asarray([int(ex["label"]) for ex in exs], np.int32),
            "key": f"binding/{i}"}

  def texts(self) -> list[str]:
    """Every caption as it appears in a sequence, each name many times (for a tokenizer)."""
    caps = [self.prompt.format(n) for n in self.names]
    if self.keys is not None:
      caps += [f"{k}{c}" for k in self.keys for c in caps]
    return [f"{IMAGE}{c}{END_OF_CHUNK}" for c in caps] * 50
