"""The `tfds` source on a tiny TFDS dataset written here (ArrayRecord files; no TensorFlow)."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from bigvl.data import sources  # noqa: E402

pytestmark = pytest.mark.unit

NAMES = ["cat", "coffee", "rocket"]


def _photos():
  from skimage import data as skdata
  out = []
  for name in NAMES:
    img = Image.fromarray(getattr(skdata, "chelsea" if name == "cat" else name)())
    img.thumbnail((40, 40))
    out.append(np.asarray(img))
  return out


class BigvlTinyCaptions(tfds.core.GeneratorBasedBuilder):
  """Three real photos with a caption, several captions, and a class label."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "caption": tfds.features.Text(),
        "captions": tfds.features.Sequence(tfds.features.Text()),
        "label": tfds.features.ClassLabel(names=NAMES),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(3)), "test": self._generate_examples([1])}

  def _generate_examples(self, indices):
    photos = _photos()
    for i in indices:
      buf = io.BytesIO()
      Image.fromarray(photos[i]).save(buf, format="PNG")
      # An Image feature takes a file-like object: encoding it needs no TensorFlow.
      yield i, {"image": io.BytesIO(buf.getvalue()), "caption": f"a photo of a {NAMES[i]}",
                "captions": [f"{NAMES[i]} one", f"{NAMES[i]} two"], "label": i}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  BigvlTinyCaptions(data_dir=d, file_format="array_record").download_and_prepare()
  return d


def test_tfds_examples_are_canonical(data_dir):
  src = sources.build({"name": "tfds", "dataset": "bigvl_tiny_captions", "split": "train",
                       "data_dir": data_dir, "text_key": "caption"})
  assert len(src) == 3 and src.class_names == tuple(NAMES)
  photos = _photos()
  for i in range(3):
    ex = src[i]
    assert ex["key"] == f"bigvl_tiny_captions/train/{i}"
    assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3
    np.testing.assert_array_equal(ex["image"], photos[i])  # PNG is lossless.
    assert ex["texts"] == (f"a photo of a {NAMES[i]}",)
    assert ex["label"] == i and ex["label"].dtype == np.int32
  assert src.texts() == [f"a photo of a {n}" for n in NAMES]
  clone = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(clone[2]["image"], src[2]["image"])


def test_tfds_sequence_texts_and_no_labels(data_dir):
  src = sources.build({"name": "tfds", "dataset": "bigvl_tiny_captions", "split": "test",
                       "data_dir": data_dir, "text_key": "captions", "label_key": None})
  assert len(src) == 1 and src.class_names is None
  ex = src[0]
  assert ex["texts"] == ("coffee one", "coffee two") and ex["label"] == -1
  untexted = sources.build({"name": "tfds", "dataset": "bigvl_tiny_captions", "split": "test",
                            "data_dir": data_dir})
  assert untexted[0]["texts"] == () and untexted.texts() == []


def test_tfds_unknown_feature_names_the_features(data_dir):
  with pytest.raises(ValueError, match="no feature 'text'.*caption"):
    sources.build({"name": "tfds", "dataset": "bigvl_tiny_captions", "data_dir": data_dir,
                   "text_key": "text"})
  with pytest.raises(ValueError, match="no feature 'cls'.*label_key=None"):
    sources.build({"name": "tfds", "dataset": "bigvl_tiny_captions", "data_dir": data_dir,
                   "label_key": "cls"})
