"""The built-in `shapes` source: determinism, and captions checked against the pixels."""

import hashlib
import pickle
import re

import numpy as np
import pytest
from scipy import ndimage

from bigvl.data import sources
from bigvl.data.shapes import PALETTE, SHAPES, Shapes

pytestmark = pytest.mark.unit

CAPTION = re.compile(r"^a (\w+) (\w+)(?: (above|below|left of|right of) a (\w+) (\w+))?\.$")


def _blobs(image):
  """Each shape in `image`: (colour name, shape guess, centroid (y, x)), from pixels only."""
  labels, n = ndimage.label(image.max(-1) > 0)
  names = list(PALETTE)
  rgb = np.array([PALETTE[c] for c in names], np.float64)
  out = []
  for k in range(1, n + 1):
    ys, xs = np.nonzero(labels == k)
    mean = image[ys, xs].astype(np.float64).mean(0)
    colour = names[int(np.argmin(((rgb - mean) ** 2).sum(-1)))]
    # Fill fraction of the bounding box: square 1, circle ~0.8, triangle ~0.6.
    fill = len(ys) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    shape = "square" if fill > 0.95 else "circle" if fill > 0.7 else "triangle"
    out.append((colour, shape, (ys.mean(), xs.mean())))
  return out


def _relation(a, b):
  """The relation of centroid `a` to `b` along the clearly dominant axis, else None."""
  dy, dx = a[0] - b[0], a[1] - b[1]
  if abs(dy) >= 1.5 * abs(dx):
    return "above" if dy < 0 else "below"
  if abs(dx) >= 1.5 * abs(dy):
    return "left of" if dx < 0 else "right of"
  return None


def _check_against_pixels(ex):
  m = CAPTION.match(ex["texts"][0])
  assert m, ex["texts"]
  blobs = _blobs(ex["image"])
  if m.group(3) is None:
    assert len(blobs) == 1, (ex["key"], ex["texts"], blobs)
    assert blobs[0][:2] == (m.group(1), m.group(2)), (ex["key"], ex["texts"], blobs)
    return None
  assert len(blobs) == 2, (ex["key"], ex["texts"], blobs)
  first, rel, second = (m.group(1), m.group(2)), m.group(3), (m.group(4), m.group(5))
  by_kind = {b[:2]: b[2] for b in blobs}
  assert set(by_kind) == {first, second}, (ex["key"], ex["texts"], blobs)
  assert _relation(by_kind[first], by_kind[second]) == rel, (ex["key"], ex["texts"], blobs)
  return rel


def test_deterministic_and_random_access():
  a, b = Shapes("train"), Shapes("train")
  for i in (0, 1, 777, 49_999, -1):
    ea, eb = a[i], b[i]
    np.testing.assert_array_equal(ea["image"], eb["image"])
    assert ea["texts"] == eb["texts"] and ea["key"] == eb["key"]
  assert a[-1]["key"] == "shapes/train/49999"
  # Pinned: the same examples forever (a changed generator must change these on purpose).
  pinned = {"train": "53b1f936190ab1a23556440b02407e4129426a18c1687fe68a2b914629a78d86",
            "test": "06ae297e3971224b094235ed6feb73e76d9f4116b5da3b950a6014fefd47f24e"}
  for split, want in pinned.items():
    h = hashlib.sha256()
    s = Shapes(split)
    for i in range(20):
      ex = s[i]
      h.update(ex["image"].tobytes())
      h.update(ex["texts"][0].encode())
    assert h.hexdigest() == want, split


def test_example_format():
  ex = Shapes("test")[3]
  assert set(ex) == {"key", "image", "texts", "label"}
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
  assert isinstance(ex["texts"], tuple) and len(ex["texts"]) == 1
  assert ex["label"].dtype == np.int32 and ex["label"] == -1
  assert Shapes("test", size=48)[3]["image"].shape == (48, 48, 3)


def test_splits_differ():
  train, test = Shapes("train"), Shapes("test")
  same = sum(np.array_equal(train[i]["image"], test[i]["image"]) for i in range(100))
  assert same <= 5, same
  assert len(train) == 50_000 and len(test) == 500 and len(Shapes("train", n=7)) == 7


@pytest.mark.parametrize("size", [32, 20])
def test_captions_match_pixels(size):
  s = Shapes("train", size=size)
  rels = [_check_against_pixels(s[i]) for i in range(0, 50_000, 250)]  # 200 examples.
  seen = {r for r in rels if r}
  assert seen == {"above", "below", "left of", "right of"}, seen
  assert 50 < rels.count(None) < 150  # About half the images hold one shape.


def test_single_shape_option():
  s = Shapes("test", max_shapes=1)
  for i in range(100):
    ex = s[i]
    assert _check_against_pixels(ex) is None
    assert ex["label"] == -1


def test_color_task_labels_are_the_blob_colour():
  s = Shapes("test", task="color")
  assert s.class_names == ("red", "green", "blue", "yellow")
  assert s.templates == ("a {} circle.", "a {} square.", "a {} triangle.")
  labels = []
  for i in range(200):
    ex = s[i]
    (colour, shape, _), = _blobs(ex["image"])
    assert s.class_names[int(ex["label"])] == colour, (i, ex["texts"])
    assert ex["texts"] == (f"a {colour} {shape}.",)
    labels.append(int(ex["label"]))
  assert set(labels) == {0, 1, 2, 3}
  six = Shapes("test", task="color", colors=list(PALETTE))
  assert six.class_names == tuple(PALETTE)
  assert {_blobs(six[i]["image"])[0][0] for i in range(200)} == set(PALETTE)
  assert Shapes("test").class_names is None and Shapes("test").templates is None


def test_texts_match_getitem_and_vocabulary():
  s = Shapes("train")
  texts = s.texts()
  assert len(texts) == 50_000
  assert texts[:100] == [s[i]["texts"][0] for i in range(100)]
  small = Shapes("test", n=30, task="color")
  assert small.texts() == [small[i]["texts"][0] for i in range(30)]
  vocab = sorted({w for t in texts for w in t.rstrip(".").split()})
  print("shapes vocabulary:", vocab)
  assert set(vocab) == ({"a", "above", "below", "left", "right", "of"} | set(SHAPES)
                        | {"red", "green", "blue", "yellow"})


def test_build_and_pickle():
  s = sources.build({"name": "shapes", "split": "test"})
  assert isinstance(s, Shapes) and len(s) == 500
  t = pickle.loads(pickle.dumps(s))
  np.testing.assert_array_equal(t[5]["image"], s[5]["image"])
  assert t[5]["texts"] == s[5]["texts"] and repr(t) == repr(s)
  assert "split='test'" in repr(s) and "n=500" in repr(s)
  color = sources.build({"name": "shapes", "split": "test", "task": "color", "pp": "rgb"})
  assert color.class_names == ("red", "green", "blue", "yellow")


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val"), "split 'val'"),
    (dict(task="count"), "task 'count'"),
    (dict(colors=["red", "gren"]), "Did you mean 'green'"),
    (dict(colors=["red", "red"]), "distinct"),
    (dict(max_shapes=3), "max_shapes"),
    (dict(task="color", max_shapes=2), "max_shapes=1"),
    (dict(size=8), "size"),
    (dict(n=0), "positive"),
])
def test_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Shapes(**kwargs)


def test_index_out_of_range():
  s = Shapes("test", n=3)
  with pytest.raises(IndexError, match="out of range"):
    s[3]
  assert len(list(s)) == 3  # Iteration stops at the end via IndexError.
