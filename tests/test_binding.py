"""Fast-binding sequences: the `binding` source (training sequences with per-sequence nonsense
names). The evaluator's tests: tests/test_binding_eval.py."""

import numpy as np
import pytest

from bigvl.data import sources, transforms
from bigvl.data.binding import KEYS, NAMES

pytestmark = pytest.mark.unit

INNER = dict(name="digits", split="train")


def test_a_sequence_binds_one_fresh_name_per_class():
  src = sources.build(dict(name="binding", inner=INNER, ways=5, length=41, size=100))
  seen_pairs = set()
  for i in (0, 1, 57):
    r = src[i]
    assert len(r["images"]) == len(r["texts"]) == len(r["labels"]) == 41
    names = {}
    for (text,), way, cls in zip(r["texts"], r["labels"], r["classes"]):
      names.setdefault(int(way), set()).add(text)
      seen_pairs.add((text, int(cls)))
    # One name per way, distinct across ways, each a nonsense word; one class per way.
    assert all(len(v) == 1 for v in names.values()) and len(names) <= 5
    assert len({next(iter(v)) for v in names.values()}) == len(names)
    assert all(t[0] in NAMES for t in r["texts"])
    for w in names:
      assert len({int(c) for c, ww in zip(r["classes"], r["labels"]) if ww == w}) == 1
    again = src[i]
    assert again["texts"] == r["texts"] and all(
        np.array_equal(a, b) for a, b in zip(again["images"], r["images"]))
  # Across sequences a name goes with many classes: it means nothing outside its sequence.
  for i in range(40):
    r = src[i]
    seen_pairs |= {(t[0], int(c)) for t, c in zip(r["texts"], r["classes"])}
  by_name = {}
  for t, c in seen_pairs:
    by_name.setdefault(t, set()).add(c)
  assert len(by_name) == len(NAMES) and min(len(v) for v in by_name.values()) >= 3


@pytest.mark.parametrize("options, message", [
    (dict(ways=1), "ways=1 must be >= 2"),
    (dict(ways=11), "ways=11 but only 10 classes"),
    (dict(classes=(0, 1, 2), ways=4), "ways=4 but only 3 classes"),
    (dict(classes=(3, 12)), r"classes \[12\] have no example"),
    (dict(names=("a", "b", "c"), ways=4), "only 3 distinct names"),
    (dict(prompt="name"), "needs a {} for the name"),
    (dict(min_length=0), r"min_length=0 must be in \[1, length=41\]"),
    (dict(min_length=50), r"min_length=50 must be in \[1, length=41\]"),
    (dict(min_length=2), "min_length < length needs keys=True"),
])
def test_bad_options_are_refused_in_one_line(options, message):
  with pytest.raises(ValueError, match=message) as e:
    sources.build(dict(name="binding", inner=INNER, **options))
  assert "\n" not in str(e.value)


def test_keyed_text_puts_one_key_per_class_where_the_image_goes():
  src = sources.build(dict(name="binding", inner=INNER, keys=True, size=10))
  op = transforms.build("interleave_text(image='')")
  for i in range(3):
    r = src[i]
    text = op(dict(r), None)["text"]
    chunks = text.split("<|endofchunk|>")
    assert chunks[-1] == "" and len(chunks) - 1 == 41 and "<image>" not in text
    pairs = {}
    for c, way in zip(chunks, r["labels"]):
      key = next(k for k in KEYS if c.startswith(k))
      assert c[len(key):] in NAMES
      pairs.setdefault(int(way), set()).add((key, c[len(key):]))
    # One (key, name) per way; keys distinct across ways, like the names.
    assert all(len(v) == 1 for v in pairs.values())
    assert len({next(iter(v))[0] for v in pairs.values()}) == len(pairs)


def test_min_length_draws_short_and_long_sequences_the_same_on_every_read():
  src = sources.build(dict(name="binding", inner=INNER, keys=True, min_length=2, length=41,
                           size=400))
  lengths = np.asarray([len(src[i]["texts"]) for i in range(400)])
  assert lengths.min() >= 2 and lengths.max() <= 41
  # Log-uniform: about as many records of 2-6 examples as of 14-41 (a third each).
  assert 0.2 < np.mean(lengths <= 6) < 0.45 and 0.2 < np.mean(lengths >= 14) < 0.45
  assert all(len(src[i]["labels"]) == len(src[i]["texts"]) == lengths[i] for i in range(5))
  assert [len(src[i]["texts"]) for i in range(20)] == list(lengths[:20])
