"""Zero-shot ImageNet and COCO-style retrieval configured by name: the shipped class-name and
template lists, the zero-shot evaluator on them (1000 classes x 80 templates) against a NumPy
recomputation, retrieval on a multi-caption TFDS dataset, the presets, and the errors.

Run as a script (`python tests/test_zeroshot_names.py TEMPLATES`) it prints the zero-shot
metrics of the fixed model as one JSON line: the multi-device test runs it on 4 devices.
"""

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigvl import models, sharding as sh
from bigvl.data import sources, tokenizer as tok_lib, transforms
from bigvl.evaluators import EvalContext, build, class_names as cn, presets
from bigvl.evaluators.retrieval import recall_at_k
from bigvl.evaluators.zeroshot import class_embeddings, topk_accuracy

NAMES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "bigvl", "evaluators", "names")
TOWER = dict(width=32, depth=1, mlp_dim=64, num_heads=4)
TEXT_LEN = 16
PP = "value_range(-1, 1)"
N_IMAGES = 48


def _file_lines(name):
  with open(os.path.join(NAMES_DIR, name), encoding="utf-8") as f:
    return f.read().splitlines()


# ---------------------------------------------------------------- the lists


@pytest.mark.unit
def test_imagenet_class_names_file():
  names = cn.class_names("imagenet")
  assert list(names) == _file_lines("imagenet_classes.txt")  # No blank or dropped lines.
  assert len(names) == 1000 and all(n and n == n.strip() for n in names)
  # Spot checks against CLIP's notebook (== open_clip's IMAGENET_CLASSNAMES) at known labels.
  assert names[0] == "tench" and names[1] == "goldfish" and names[2] == "great white shark"
  assert names[207] == "Golden Retriever" and names[281] == "tabby cat"
  assert names[999] == "toilet paper"
  # The published list has two duplicate pairs (ImageNet's missile / projectile, missile and
  # sunglass / sunglasses); kept as published, so 998 distinct names.
  assert len(set(names)) == 998
  dups = {n: [i for i, m in enumerate(names) if m == n] for n in set(names)
          if names.count(n) > 1}
  assert dups == {"missile": [657, 744], "sunglasses": [836, 837]}


@pytest.mark.unit
def test_clip_template_files():
  t80 = cn.templates("clip80")
  assert list(t80) == _file_lines("clip_templates.txt")
  assert len(t80) == 80 and len(set(t80)) == 80
  assert all(t.count("{}") == 1 and t.count("{") == 1 and t.count("}") == 1 for t in t80)
  assert t80[0] == "a bad photo of a {}." and t80[-1] == "a tattoo of the {}."
  assert "a photo of a {}." in t80 and "itap of a {}." in t80
  t7 = cn.templates("clip7")
  assert t7 == ("itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                "a photo of the small {}.")
  assert set(t7) <= set(t80)


@pytest.mark.unit
def test_named_list_helpers():
  assert cn.as_class_names(None) is None and cn.as_templates(None) is None
  assert cn.as_class_names("imagenet") == cn.class_names("imagenet")
  assert cn.as_class_names(["cat", "dog"]) == ("cat", "dog")
  assert cn.as_templates("clip7") == cn.templates("clip7")
  with pytest.raises(ValueError, match=r"Unknown class-name list 'imagenet21k'; valid: imagenet"):
    cn.class_names("imagenet21k")
  with pytest.raises(ValueError, match=r"Unknown template list 'clip81'; valid: clip7, clip80"):
    cn.templates("clip81")
  with pytest.raises(ValueError, match=r"has no '\{\}'"):
    cn.as_templates(["a photo of a cat."])


# ---------------------------------------------------------------- zero-shot evaluator


class RecordingTokenizer:
  """A tokenizer that remembers every text it encoded (what the evaluator prompted with)."""

  def __init__(self, tok):
    self.tok, self.seen = tok, []

  def encode(self, texts, length):
    self.seen += [texts] if isinstance(texts, str) else list(texts)
    return self.tok.encode(texts, length)

  def __getattr__(self, name):
    return getattr(self.tok, name)


def _setup():
  """(ctx with a recording tokenizer, model, params, mesh) of a fixed tiny random two-tower
  model on all devices here."""
  names = cn.class_names("imagenet")
  tok = tok_lib.train([t.format(n) for n in names for t in cn.templates("clip7")],
                      vocab_size=256)
  model = models.build(dict(
      name="two_towers", image=dict(patch_size=4, pool="gap", **TOWER),
      text=dict(vocab_size=tok.vocab_size, max_len=TEXT_LEN, pool="last", **TOWER),
      embed_dim=16))
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32),
                      np.zeros((1, TEXT_LEN), np.int32))["params"]
  mesh = sh.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  ctx = EvalContext(model=model, tokenizer=RecordingTokenizer(tok), text_len=TEXT_LEN,
                    mesh=mesh, rules=sh.get_rules("dp"))
  return ctx, model, params, mesh


def _fake_imagenet(**over):
  """The synthetic source as a tiny ImageNet validation split: 1000 classes, their names."""
  return dict(dict(name="synthetic", split="validation", size=N_IMAGES, image_size=16,
                   num_classes=1000, class_names=list(cn.class_names("imagenet")), pp=PP),
              **over)


def _zeroshot_metrics(templates, batch_size=512):
  ctx, _, params, mesh = _setup()
  cfg = dict(name="zeroshot", data=_fake_imagenet(), class_names="imagenet",
             templates=templates, batch_size=batch_size)
  with jax.set_mesh(mesh):
    return build("zeroshot", cfg, ctx).run(params)


@pytest.fixture(scope="module")
def setup():
  return _setup()


@pytest.mark.unit
def test_zeroshot_imagenet_clip80_matches_numpy(setup):
  ctx, model, params, mesh = setup
  ctx.tokenizer.seen.clear()
  cfg = presets.imagenet_zeroshot(PP, data=_fake_imagenet(), batch_size=512)
  assert (cfg["class_names"], cfg["templates"]) == ("imagenet", "clip80")
  with jax.set_mesh(mesh):
    ev = build("zeroshot", cfg, ctx)
    metrics = ev.run(params)
    text_emb = ev.text_embeddings(params)  # The same params: the same embeddings.
  # It prompted with the data files' names and templates, class-major.
  names, t80 = cn.class_names("imagenet"), cn.templates("clip80")
  prompts = [t.format(n) for n in names for t in t80]
  assert len(prompts) == 80_000
  assert ctx.tokenizer.seen[:80_000] == prompts and "a bad photo of a goldfish." in prompts
  assert text_emb.shape == (1000, 80, 16)
  # Row (c, t) is the model's embedding of prompt c*80+t (batching and padding changed nothing).
  for c, t in ((0, 0), (1, 0), (999, 79), (500, 33)):
    tokens = ctx.tokenizer.tok.encode([prompts[c * 80 + t]], TEXT_LEN)
    direct = np.asarray(model.apply({"params": params}, tokens, method="embed_text"))[0]
    np.testing.assert_allclose(text_emb[c, t], direct, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(text_emb, axis=-1), 1.0, rtol=1e-5)
  # NumPy: class = normalised mean of the normalised template embeddings; top-k by cosine.
  mean = text_emb.mean(axis=1)
  cls = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
  np.testing.assert_allclose(class_embeddings(text_emb), cls, rtol=1e-6)
  src = sources.build({k: v for k, v in _fake_imagenet().items() if k != "pp"})
  pp = transforms.build(PP)
  images = np.stack([pp(src[i], None)["image"] for i in range(len(src))])
  labels = np.array([src[i]["label"] for i in range(len(src))])
  assert labels.max() > 100  # Labels spread over the 1000 classes.
  img = np.asarray(model.apply({"params": params}, images, method="embed_image_joint"))
  order = np.argsort(-(img @ cls.T), axis=1, kind="stable")
  top1 = np.mean(order[:, 0] == labels)
  top5 = np.mean(np.any(order[:, :5] == labels[:, None], axis=1))
  assert set(metrics) == {"top1", "top5"}
  assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
  assert metrics["top1"] == pytest.approx(top1, abs=1e-9)
  assert metrics["top5"] == pytest.approx(top5, abs=1e-9)
  assert metrics == pytest.approx(topk_accuracy(img, labels, cls))


@pytest.mark.integration
@pytest.mark.slow  # A 4-device subprocess embedding 8,000 prompts: about 20 s.
def test_zeroshot_names_same_numbers_on_1_and_4_devices():
  one = _zeroshot_metrics("clip7")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "clip7"], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  four = json.loads(proc.stdout.strip().splitlines()[-1])
  assert four.pop("devices") == 4 and jax.device_count() == 1
  assert four == one


@pytest.mark.unit
def test_zeroshot_errors(setup):
  ctx, _, params, mesh = setup
  with pytest.raises(ValueError, match=r"Unknown class-name list 'imagenet1k'; valid: imagenet"):
    build("z", dict(name="zeroshot", data=_fake_imagenet(), class_names="imagenet1k"), ctx)
  with pytest.raises(ValueError, match=r"Unknown template list 'clip8'; valid: clip7, clip80"):
    build("z", dict(name="zeroshot", data=_fake_imagenet(), templates="clip8"), ctx)
  # Ten names for labels up to 999: refused, not silently counted wrong.
  short = list(cn.class_names("imagenet")[:10])
  ev = build("z", dict(name="zeroshot", data=_fake_imagenet(), class_names=short,
                       templates=["a photo of a {}."], batch_size=64), ctx)
  with jax.set_mesh(mesh), pytest.raises(
      ValueError, match=r"zeroshot on synthetic:validation: label \d+ but 10 class_names "
                        r"\(labels 0\.\.9\); give one name per class"):
    ev.run(params)
  # TFDS's imagenet2012 names its classes by WordNet id: the error names the list to use.
  wnids = [f"n{k:08d}" for k in range(1000)]
  with pytest.raises(ValueError, match=r"WordNet ids \(n00000000, \.\.\.\); set "
                                       r"class_names \('imagenet' for ImageNet-1k's 1000\)"):
    build("z", dict(name="zeroshot", data=_fake_imagenet(class_names=wnids)), ctx)


# ---------------------------------------------------------------- retrieval, presets


class BigvlFakeCocoCaptions(tfds.core.GeneratorBasedBuilder):
  """coco_captions' feature layout (captions: Sequence({text, id})), 5 or 6 captions an image."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "image/id": np.int64,
        "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
    }))

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples(6)}

  def _generate_examples(self, n):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n):
      buf = io.BytesIO()
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
      yield i, {"image": io.BytesIO(buf.getvalue()), "image/id": i,
                "captions": [{"text": f"a photo of the {cn.class_names('imagenet')[i]} {k}",
                              "id": 10 * i + k} for k in range(5 + i % 2)]}


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  BigvlFakeCocoCaptions(data_dir=d, file_format="array_record").download_and_prepare()
  return d


@pytest.mark.unit
def test_presets_shapes():
  assert presets.imagenet_zeroshot("resize(224)") == dict(
      name="zeroshot", class_names="imagenet", templates="clip80",
      data=dict(name="tfds", dataset="imagenet2012", split="validation", pp="resize(224)"))
  assert presets.imagenet_zeroshot("p", data_dir="/d", templates="clip7", every=10) == dict(
      name="zeroshot", class_names="imagenet", templates="clip7", every=10,
      data=dict(name="tfds", dataset="imagenet2012", split="validation", data_dir="/d", pp="p"))
  assert presets.coco_retrieval("p", data_dir="/d") == dict(
      name="retrieval", data=dict(name="tfds", dataset="coco_captions", split="test",
                                  text_key="captions/text", data_dir="/d", pp="p"))
  assert presets.flickr30k_retrieval("decode|p", data_dir="/f", ks=(1, 5)) == dict(
      name="retrieval", ks=(1, 5),
      data=dict(name="shards", data_dir="/f", split="test", pp="decode|p"))
  # A `data` block of its own replaces the default source and keeps its own pp.
  own = presets.coco_retrieval("p", data=dict(name="shards", data_dir="/s", pp="decode|p"))
  assert own["data"] == dict(name="shards", data_dir="/s", pp="decode|p")


@pytest.mark.unit
def test_retrieval_on_multi_caption_tfds(setup, coco_dir):
  ctx, model, params, mesh = setup
  cfg = presets.coco_retrieval(PP, data_dir=coco_dir, batch_size=8)
  cfg["data"]["dataset"] = "bigvl_fake_coco_captions"  # The coco_captions layout, made here.
  ctx.tokenizer.seen.clear()
  with jax.set_mesh(mesh):
    metrics = build("coco", cfg, ctx).run(params)
  src = sources.build({k: v for k, v in cfg["data"].items() if k != "pp"})
  texts, owner, images = [], [], []
  for i in range(len(src)):
    ex = src[i]
    assert len(ex["texts"]) in (5, 6)  # Every caption of the nested captions/text feature.
    texts += ex["texts"]
    owner += [i] * len(ex["texts"])
    images.append(transforms.build(PP)(ex, None)["image"])
  assert len(texts) == 33 and ctx.tokenizer.seen[:33] == texts  # Then the last batch's padding.
  txt = np.asarray(model.apply({"params": params}, ctx.tokenizer.tok.encode(texts, TEXT_LEN),
                               method="embed_text"))
  img = np.asarray(model.apply({"params": params}, np.stack(images), method="embed_image_joint"))
  assert metrics == pytest.approx(recall_at_k(img, txt, np.array(owner)), abs=1e-9)
  assert set(metrics) == {f"{d}_r@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}


if __name__ == "__main__":
  print(json.dumps(dict(_zeroshot_metrics(sys.argv[1]), devices=jax.device_count())))


@pytest.mark.unit
def test_lists_equal_open_clips():
  """The shipped lists are open_clip's (CLIP's notebook): 1000 names in label order (998
  distinct, as published) and the 80 OpenAI templates, in order."""
  from bigvl.convert import testing
  testing.import_torch_references()
  from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
  assert cn.class_names("imagenet") == tuple(IMAGENET_CLASSNAMES)
  assert cn.templates("clip80") == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
