"""The `tfds` source: a prepared TensorFlow Datasets dataset, read through `tfds.data_source`.

Needs the dataset in ArrayRecord format (`file_format="array_record"`); TensorFlow itself
is not needed. Images come as the decoded uint8 arrays tfds gives. A feature key may be a
path into nested features, e.g. `text_key="captions/text"`.
"""

from __future__ import annotations

import numpy as np

from bigvl.registry import SOURCES


def _get(example, key: str):
  for part in key.split("/"):
    example = example[part]
  return example


def _feature(features, key: str):
  """The tfds feature at `key` ("a/b" for nested), or None when there is none."""
  node = features
  for part in key.split("/"):
    inner = getattr(node, "feature", node)  # Sequence(FeaturesDict) wraps its dict.
    try:
      node = inner[part]
    except (KeyError, TypeError):
      return None
  return node


def _to_texts(value) -> tuple[str, ...]:
  if isinstance(value, (bytes, str)):
    value = [value]
  out = tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.ravel(
      np.asarray(value, dtype=object)))
  return tuple(t for t in out if t)


@SOURCES.register("tfds")
class TfdsSource:
  """Random-access canonical examples of one split of a TFDS dataset (`dataset`: its TFDS
  name, e.g. `dict(name="tfds", dataset="coco_captions", split="val")`)."""

  def __init__(self, dataset: str, split: str = "train", data_dir: str | None = None,
               image_key: str = "image", text_key: str | None = None,
               label_key: str | None = "label"):
    import tensorflow_datasets as tfds  # Heavy; only a tfds source pays for it.
    self.dataset, self.split, self.data_dir = dataset, split, data_dir
    self.image_key, self.text_key = image_key, text_key
    self._ds = tfds.data_source(dataset, split=split, data_dir=data_dir)
    features = self._ds.dataset_info.features
    known = sorted(features.keys())
    for what, key in (("image_key", image_key), ("text_key", text_key)):
      if key is not None and _feature(features, key) is None:
        raise ValueError(f"tfds {dataset!r} has no feature {key!r} for {what}; its features: "
                         f"{known}. Set {what} in the 'tfds' source config.")
    label = _feature(features, label_key) if label_key else None
    if label_key and label is None and label_key != "label":
      raise ValueError(f"tfds {dataset!r} has no feature {label_key!r} for label_key; its "
                       f"features: {known}. Set label_key=None for no labels.")
    self.label_key = label_key if label is not None else None
    names = getattr(label, "names", None) if isinstance(label, tfds.features.ClassLabel) else None
    self.class_names = tuple(names) if names else None

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, i: int) -> dict:
    ex = self._ds[i]
    image = np.asarray(_get(ex, self.image_key), np.uint8)
    if image.ndim == 2:
      image = image[..., None]  # Keep (H, W, C) for every source.
    return {"key": f"{self.dataset}/{self.split}/{int(i)}", "image": image,
            "texts": _to_texts(_get(ex, self.text_key)) if self.text_key else (),
            "label": np.int32(_get(ex, self.label_key) if self.label_key else -1)}

  def texts(self) -> list[str]:
    """Every caption of the split (for tokenizer training); images are not decoded."""
    if not self.text_key:
      return []
    import tensorflow_datasets as tfds
    skip = tfds.decode.SkipDecoding()
    for part in reversed(self.image_key.split("/")):
      skip = {part: skip}
    ds = tfds.data_source(self.dataset, split=self.split, data_dir=self.data_dir, decoders=skip)
    return [t for i in range(len(ds)) for t in _to_texts(_get(ds[i], self.text_key))]

  def __repr__(self):
    return f"TfdsSource({self.dataset!r}, split={self.split!r}, n={len(self)})"
