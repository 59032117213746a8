"""Image <-> text retrieval with a two-tower model: Recall@K both ways (COCO/Flickr style).

Every image of the source is a query for its own captions (`texts`), and every caption a
query for its image.
"""

from __future__ import annotations

import jax
import numpy as np

from bigvl import sharding as sh
from bigvl.data import loader, transforms
from bigvl.evaluators.context import eval_batch_size, eval_pp, eval_source
from bigvl.evaluators.zeroshot import embed_texts
from bigvl.models.capabilities import ImageTextEmbedder, require
from bigvl.registry import EVALUATORS

_CHUNK = 1024  # Query rows per similarity block: bounds host memory on 5k x 25k sets.


def recall_at_k(img_emb: np.ndarray, txt_emb: np.ndarray, txt_image: np.ndarray,
                ks=(1, 5, 10)) -> dict[str, float]:
  """Recall@K of image->text and text->image retrieval by cosine similarity.

  Args:
    img_emb: (n_images, d) normalised; txt_emb: (n_texts, d) normalised.
    txt_image: (n_texts,) int, the image each text describes.
  Returns:
    {"i2t_r@K": fraction of images with one of their texts among the K most similar texts,
     "t2i_r@K": fraction of texts whose image is among the K most similar images}.
    Ties are broken by index (stable sort), so a result never depends on the hardware.
  """
  txt_image = np.asarray(txt_image)
  n_img = img_emb.shape[0]
  out = {}
  i2t_rank = np.empty(n_img, np.int64)  # Best rank of any of the image's own texts.
  for s in range(0, n_img, _CHUNK):
    sims = img_emb[s:s + _CHUNK] @ txt_emb.T
    order = np.argsort(-sims, axis=1, kind="stable")
    hit = txt_image[order] == np.arange(s, s + sims.shape[0])[:, None]
    i2t_rank[s:s + sims.shape[0]] = np.where(hit.any(1), hit.argmax(1), sims.shape[1])
  t2i_rank = np.empty(len(txt_image), np.int64)
  for s in range(0, len(txt_image), _CHUNK):
    sims = txt_emb[s:s + _CHUNK] @ img_emb.T
    order = np.argsort(-sims, axis=1, kind="stable")
    t2i_rank[s:s + sims.shape[0]] = (order == txt_image[s:s + sims.shape[0], None]).argmax(1)
  for k in ks:
    out[f"i2t_r@{k}"] = float(np.mean(i2t_rank < k))
    out[f"t2i_r@{k}"] = float(np.mean(t2i_rank < k))
  return out


@EVALUATORS.register("retrieval")
class Retrieval:
  """Recall@1/5/10 image->text and text->image over a source's images and their captions.

  data: its data config; each record's `texts` are its image's captions, any number of them
  (COCO and Flickr30k have 5 an image, e.g. `dict(name="tfds", dataset="coco_captions",
  split="test", text_key="captions/text")`). An image counts as found at K when any of its
  captions is among the K texts nearest to it; every caption is a query for its image.
  """

  def __init__(self, ctx, *, data: dict, ks=(1, 5, 10), batch_size: int = 256):
    require(ctx.model, ImageTextEmbedder, "retrieval")
    self.ctx, self.ks = ctx, tuple(ks)
    self.source = eval_source(data, "retrieval")
    self.pp = transforms.build(eval_pp(data), tokenizer=ctx.tokenizer, text_len=ctx.text_len)
    self.batch_size = eval_batch_size(ctx, batch_size)
    model = ctx.model
    self._embed_image = jax.jit(
        lambda p, x: model.apply({"params": p}, x, method="embed_image_joint"))
    self._embed_text = jax.jit(lambda p, t: model.apply({"params": p}, t, method="embed_text"))

  def _texts(self):
    texts, owner = [], []
    for i in range(len(self.source)):
      caps = self.source[i]["texts"]
      caps = (caps,) if isinstance(caps, str) else caps
      texts += list(caps)
      owner += [i] * len(caps)
    if not texts:
      raise ValueError("retrieval: the source has no captions (`texts`).")
    return texts, np.asarray(owner)

  def run(self, params) -> dict[str, float]:
    texts, owner = self._texts()
    txt = embed_texts(self._embed_text, params, texts, self.ctx, self.batch_size)
    img = np.zeros((len(self.source), txt.shape[1]), np.float32)
    indexed = loader.IndexedSource(self.source)
    for batch in loader.eval_batches(indexed, self.pp, self.batch_size // self.ctx.process_count,
                                     self.ctx.process_index, self.ctx.process_count):
      g = sh.to_global_batch({"image": batch["image"], "index": batch["_index"],
                              "mask": batch["_mask"]}, self.ctx.mesh, self.ctx.rules)
      emb = sh.to_host(self._embed_image(params, g["image"]))
      index, mask = sh.to_host(g["index"]), sh.to_host(g["mask"])
      img[index[mask]] = emb[mask]
    return recall_at_k(img, txt, owner, self.ks)

