"""The fashion_mnist source: the installed package's counts and pixels, and its errors on a
missing or damaged file (small idx files written to a tmp dir)."""

import gzip
import os

import numpy as np
import pytest

from bigvl.data import fashion_mnist as fm
from bigvl.data import sources

pytestmark = pytest.mark.unit

INSTALLED = os.path.isfile(fm.file_path(fm.DEFAULT_DIR, "test", "labels"))
needs_package = pytest.mark.skipif(not INSTALLED, reason=fm.INSTALL)


def write_idx(path, magic, dims, data: bytes, compress=True):
  raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + data
  with (gzip.open if compress else open)(path, "wb") as f:
    f.write(raw)


def write_split(d, split="test", n=3, images=None, labels=None):
  """A tiny valid `split` in directory d: n images (pixel value = image index) and labels."""
  os.makedirs(d, exist_ok=True)
  images = bytes(np.repeat(np.arange(n, dtype=np.uint8), 28 * 28)) if images is None else images
  labels = bytes(np.arange(n, dtype=np.uint8) % 10) if labels is None else labels
  write_idx(fm.file_path(d, split, "images"), fm.IMAGES_MAGIC, (n, 28, 28), images)
  write_idx(fm.file_path(d, split, "labels"), fm.LABELS_MAGIC, (n,), labels)


@needs_package
def test_counts_and_label_histogram():
  train = sources.build(dict(name="fashion_mnist", split="train"))
  test = sources.build(dict(name="fashion_mnist", split="test"))
  assert (len(train), len(test)) == (60_000, 10_000)
  for src, per_class in ((train, 6_000), (test, 1_000)):
    labels = np.array([src[i]["label"] for i in range(len(src))])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
  assert len(train.texts()) == 60_000 * len(fm.TEMPLATES)


@needs_package
def test_pixels_and_labels_match_the_raw_idx_bytes():
  with gzip.open(fm.file_path(fm.DEFAULT_DIR, "train", "images")) as f:
    raw_images = f.read()
  with gzip.open(fm.file_path(fm.DEFAULT_DIR, "train", "labels")) as f:
    raw_labels = f.read()
  src = fm.FashionMnist("train")
  for i, r, c in ((0, 14, 14), (1, 5, 20), (59_999, 27, 0), (12_345, 10, 7)):
    ex = src[i]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
    assert ex["image"][r, c, 0] == raw_images[16 + i * 784 + r * 28 + c]  # 16-byte header.
    assert ex["label"] == raw_labels[8 + i]                                # 8-byte header.
  assert src[0]["label"] == 9  # The first training image is an ankle boot.
  assert src[0]["texts"][0] == "a photo of the ankle boot."
  assert src[0]["key"] == "fashion_mnist/train/0"


def test_reads_a_directory_given_by_option_or_environment(tmp_path, monkeypatch):
  write_split(str(tmp_path / "opt"))
  src = fm.FashionMnist("test", data_dir=str(tmp_path / "opt"))
  assert len(src) == 3 and src[2]["image"][0, 0, 0] == 2 and src[2]["label"] == 2
  assert src[1]["texts"] == tuple(t.format("trousers") for t in fm.TEMPLATES)
  write_split(str(tmp_path / "env"), n=4)
  monkeypatch.setenv(fm.DIR_ENV, str(tmp_path / "env"))
  assert len(fm.FashionMnist("test")) == 4


def test_missing_directory_or_file_names_the_package(tmp_path):
  with pytest.raises(OSError, match="apt-get install dataset-fashion-mnist") as e:
    fm.FashionMnist("test", data_dir=str(tmp_path / "nowhere"))
  assert "\n" not in str(e.value)
  write_split(str(tmp_path / "d"))
  with pytest.raises(OSError, match=r"train-images-idx3-ubyte.gz not found: apt-get install"):
    fm.FashionMnist("train", data_dir=str(tmp_path / "d"))


@pytest.mark.parametrize("damage, message", [
    ("truncated", r"is damaged \(.*\); reinstall"),
    ("not_gzip", r"is damaged \(.*\); reinstall"),
    ("magic", r"is damaged \(magic 00000801, expected 00000803\)"),
    ("short_data", r"is damaged \(2351 bytes of data for shape \(3, 28, 28\)\)"),
])
def test_damaged_files_are_refused_in_one_line(tmp_path, damage, message):
  d = str(tmp_path)
  write_split(d)
  path = fm.file_path(d, "test", "images")
  if damage == "truncated":
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[:len(blob) // 2])
  elif damage == "not_gzip":
    write_idx(path, fm.IMAGES_MAGIC, (3, 28, 28), bytes(3 * 784), compress=False)
  elif damage == "magic":
    write_idx(path, fm.LABELS_MAGIC, (3, 28, 28), bytes(3 * 784))
  else:
    write_idx(path, fm.IMAGES_MAGIC, (3, 28, 28), bytes(3 * 784 - 1))
  with pytest.raises(fm.FashionMnistError, match=message) as e:
    fm.FashionMnist("test", data_dir=d)
  assert "\n" not in str(e.value) and path in str(e.value)


def test_labels_out_of_range_and_unknown_split(tmp_path):
  write_split(str(tmp_path), labels=bytes([0, 1, 10]))
  with pytest.raises(fm.FashionMnistError, match="go up to 10"):
    fm.FashionMnist("test", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="Unknown fashion_mnist split 'val'"):
    fm.FashionMnist("val", data_dir=str(tmp_path))


def test_a_slice_is_the_same_records_under_the_same_keys(tmp_path):
  d = str(tmp_path)
  write_split(d, n=10, labels=bytes(range(10)))
  whole = fm.FashionMnist("test", data_dir=d)
  for split, picked in (("test[:4]", [0, 1, 2, 3]), ("test[7:]", [7, 8, 9]),
                        ("test[2:5]", [2, 3, 4]), ("test[-2:]", [8, 9])):
    part = fm.FashionMnist(split, data_dir=d)
    assert len(part) == len(picked), split
    for i, j in enumerate(picked):
      a, b = part[i], whole[j]
      assert a["key"] == b["key"] == f"fashion_mnist/test/{j}"
      np.testing.assert_array_equal(a["image"], b["image"])
      assert a["label"] == b["label"] and a["texts"] == b["texts"]
    with pytest.raises(IndexError):
      part[len(picked)]
    assert part.texts() == [t for j in picked for t in whole[j]["texts"]]


@pytest.mark.parametrize("split, message", [
    ("test[5:5]", "picks no record of the 10"), ("test[:x]", "sliced as name"),
    ("val[:3]", "Unknown fashion_mnist split"), ("test[3]", "sliced as name")])
def test_a_bad_slice_is_refused_in_one_line(tmp_path, split, message):
  write_split(str(tmp_path), n=10)
  with pytest.raises(ValueError, match=message) as e:
    fm.FashionMnist(split, data_dir=str(tmp_path))
  assert "\n" not in str(e.value)
