"""The standard eval blocks of the papers, by name: ImageNet zero-shot, COCO and Flickr30k
retrieval. Each returns one entry of `config.evals` (a plain dict):

    c.evals = dict(
        imagenet=presets.imagenet_zeroshot(pp, data_dir="/data/tfds"),
        coco=presets.coco_retrieval(pp, data_dir="/data/tfds"),
        flickr=presets.flickr30k_retrieval(pp, data_dir="/data/flickr30k"),
    )

`pp` is the eval preprocessing of the images (the sources give decoded uint8 images, e.g.
"resize(224)|value_range(-1, 1)"). `data` replaces the default source block (e.g. bigvl
shards of the same set, or `recipes.source(arg, ...)`); its own `pp`, if any, is kept.
`options` are more options of the entry (`every=...`, `ks=...`, `batch_size=...`).
"""

from __future__ import annotations


def _entry(name: str, data: dict, pp: str, options: dict) -> dict:
  return dict(name=name, data=dict({"pp": pp}, **data), **options)


def imagenet_zeroshot(pp: str, *, data_dir: str | None = None, split: str = "validation",
                      templates: str = "clip80", data: dict | None = None, **options) -> dict:
  """Zero-shot top-1/top-5 on ImageNet-1k's 50,000 validation images with CLIP's class names
  and prompt ensemble:

      {"name": "zeroshot", "class_names": "imagenet", "templates": "clip80",
       "data": {"name": "tfds", "dataset": "imagenet2012", "split": "validation", "pp": pp,
                "data_dir": data_dir (only when given)}, **options}

  templates: "clip80" (the paper's 80), "clip7" (the 7 selected of them) or a list.
  """
  if data is None:
    data = dict(name="tfds", dataset="imagenet2012", split=split)
    if data_dir:
      data["data_dir"] = data_dir
  return dict(_entry("zeroshot", data, pp, options), class_names="imagenet",
              templates=templates)


def coco_retrieval(pp: str, *, data_dir: str | None = None, split: str = "test",
                   data: dict | None = None, **options) -> dict:
  """Image<->text Recall@1/5/10 on COCO captions, Karpathy's 5,000-image test split (the
  split papers report; "val" is his other 5,000), 5 captions an image:

      {"name": "retrieval",
       "data": {"name": "tfds", "dataset": "coco_captions", "split": "test",
                "text_key": "captions/text", "pp": pp, "data_dir": data_dir (only when given)},
       **options}
  """
  if data is None:
    data = dict(name="tfds", dataset="coco_captions", split=split, text_key="captions/text")
    if data_dir:
      data["data_dir"] = data_dir
  return _entry("retrieval", data, pp, options)


def flickr30k_retrieval(pp: str, *, data_dir: str = "", split: str = "test",
                        data: dict | None = None, **options) -> dict:
  """Image<->text Recall@1/5/10 on Flickr30k, Karpathy's 1,000-image test split, 5 captions
  an image. TFDS has no Flickr30k, so the default source is bigvl shards made by
  tools/make_dataset.py (`--captions` a JSONL of {"image": file, "captions": [5 texts]} of
  that split, `--split test`; see docs/data.md); their images are encoded, so `pp` starts
  with `decode`:

      {"name": "retrieval",
       "data": {"name": "shards", "data_dir": data_dir, "split": "test", "pp": pp}, **options}
  """
  if data is None:
    data = dict(name="shards", data_dir=data_dir, split=split)
  return _entry("retrieval", data, pp, options)


def image_text_evals(pp: str, data_dir: str | None, **options) -> dict:
  """`config.evals` of an image-text pretraining run: ImageNet zero-shot (CLIP's names and
  80 templates) and COCO retrieval, both from TFDS under `data_dir`; {} without one."""
  if not data_dir:
    return {}
  return dict(imagenet=imagenet_zeroshot(pp, data_dir=data_dir, **options),
              coco=coco_retrieval(pp, data_dir=data_dir, **options))
