"""The `fashion_mnist` source: Zalando's Fashion-MNIST, read from the Debian package's idx files.

    apt-get install dataset-fashion-mnist     # -> /usr/share/datasets/fashion-mnist (MIT)

70,000 greyscale 28x28 product photos in 10 classes: `train` (60,000) and `test` (10,000),
6,000 / 1,000 of each class; a slice of one, TFDS-style: "train[:5000]", "train[10000:]"
(Zalando's order is already shuffled, so any slice of a few thousand has about a tenth of
each class). Each record: `image` uint8 (28, 28, 1), `label` int32, `texts` the caption of
every template for its class ("a photo of the sneaker."), `key` "fashion_mnist/{split}/{i}"
(i: the index in the whole split, also in a slice). Another directory holding the four `*-ubyte.gz` files:
`data_dir=...` or the environment variable BIGVL_FASHION_MNIST_DIR.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib

import numpy as np

from bigvl.data.split_slices import parse_split, slice_indices
from bigvl.registry import SOURCES

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
DIR_ENV = "BIGVL_FASHION_MNIST_DIR"
INSTALL = "apt-get install dataset-fashion-mnist"
# Label order of the dataset (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt,
# Sneaker, Bag, Ankle boot), lowercase; the templates say "the", which fits every name
# ("a photo of the trousers.", "... the ankle boot.").
CLASS_NAMES = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt",
               "sneaker", "bag", "ankle boot")
TEMPLATES = (
    "a photo of the {}.",
    "a black and white photo of the {}.",
    "a low resolution photo of the {}.",
    "a product photo of the {}.",
    "a small picture of the {}.",
)
SPLITS = {"train": "train", "test": "t10k"}  # Split -> the files' prefix.
IMAGE_SHAPE = (28, 28)
# idx magic: two zero bytes, the element type (0x08: unsigned byte), the number of dims.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


class FashionMnistError(OSError):
  """A Fashion-MNIST file is missing or damaged; the message names it and the fix."""


def resolve_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else $BIGVL_FASHION_MNIST_DIR, else the Debian package's directory."""
  return data_dir or os.environ.get(DIR_ENV) or DEFAULT_DIR


def file_path(data_dir: str, split: str, kind: str) -> str:
  """The idx file of `split` ("train"/"test") and `kind` ("images"/"labels") in `data_dir`."""
  dims = "idx3" if kind == "images" else "idx1"
  return os.path.join(data_dir, f"{SPLITS[split]}-{kind}-{dims}-ubyte.gz")


def read_idx(path: str, magic: int) -> np.ndarray:
  """The uint8 array of the gzipped idx file at `path`, shaped by its header (images:
  (n, 28, 28); labels: (n,)); FashionMnistError if it is missing, not `magic`, or cut short."""
  if not os.path.isfile(path):
    raise FashionMnistError(
        f"Fashion-MNIST file {path} not found: {INSTALL} (or set data_dir=... / ${DIR_ENV} to "
        "a directory with the four *-ubyte.gz files).")
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut file EOFError.
    raise FashionMnistError(f"Fashion-MNIST file {path} is damaged ({e}); reinstall it: "
                            f"apt-get install --reinstall dataset-fashion-mnist.") from e
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
    found = raw[:4].hex() if len(raw) >= 4 else "nothing"
    raise FashionMnistError(f"Fashion-MNIST file {path} is damaged (magic {found}, expected "
                            f"{magic:08x}); reinstall it: apt-get install --reinstall "
                            "dataset-fashion-mnist.")
  dims = tuple(int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
  if len(raw) - header != int(np.prod(dims)):
    raise FashionMnistError(f"Fashion-MNIST file {path} is damaged ({len(raw) - header} bytes "
                            f"of data for shape {dims}); reinstall it: apt-get install "
                            "--reinstall dataset-fashion-mnist.")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


@functools.cache
def load_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (n, 28, 28, 1), labels int32 (n,)) of `split`, read once per process."""
  if not os.path.isdir(data_dir):
    raise FashionMnistError(
        f"Fashion-MNIST not found at {data_dir}: {INSTALL} (or set data_dir=... / ${DIR_ENV} "
        "to a directory with the four *-ubyte.gz files).")
  images = read_idx(file_path(data_dir, split, "images"), IMAGES_MAGIC)
  labels = read_idx(file_path(data_dir, split, "labels"), LABELS_MAGIC)
  if images.shape[1:] != IMAGE_SHAPE or len(images) != len(labels):
    raise FashionMnistError(f"Fashion-MNIST {split} in {data_dir}: images {images.shape} and "
                            f"labels {labels.shape} do not match (n, 28, 28) and (n,); "
                            "reinstall: apt-get install --reinstall dataset-fashion-mnist.")
  if labels.size and labels.max() >= len(CLASS_NAMES):
    raise FashionMnistError(f"Fashion-MNIST {split} labels in {data_dir} go up to "
                            f"{labels.max()}; expected 0..9: the file is damaged, reinstall it.")
  return images[..., None], labels.astype(np.int32)


@SOURCES.register("fashion_mnist")
class FashionMnist:
  """Random-access Fashion-MNIST records for one split ("train" or "test") or a slice of
  one ("train[:5000]")."""

  def __init__(self, split: str = "train", data_dir: str | None = None,
               templates: tuple[str, ...] | list[str] | None = None):
    name, start, stop = parse_split(split, tuple(SPLITS), "fashion_mnist")
    self.split = name
    self.data_dir = resolve_dir(data_dir)
    images, labels = load_split(self.data_dir, name)
    self._indices = slice_indices(len(labels), start, stop, split, "fashion_mnist")
    self._images, self._labels = images, labels
    self.class_names = CLASS_NAMES
    self.templates = tuple(templates or TEMPLATES)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> dict:
    j = self._indices[i]  # IndexError past the slice's end, like a list.
    label = int(self._labels[j])
    return {"image": self._images[j], "label": np.int32(label),
            "texts": tuple(t.format(CLASS_NAMES[label]) for t in self.templates),
            "key": f"fashion_mnist/{self.split}/{j}"}

  def texts(self) -> list[str]:
    """Every caption of the split or slice (for tokenizer training): len(self) x templates."""
    per_class = [[t.format(c) for t in self.templates] for c in CLASS_NAMES]
    labels = self._labels[self._indices.start:self._indices.stop:self._indices.step]
    return [s for l in labels for s in per_class[l]]

  def __repr__(self):
    return f"FashionMnist(split={self.split!r}, n={len(self)}, data_dir={self.data_dir!r})"
