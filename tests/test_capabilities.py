"""Model capabilities (bigvl/models/capabilities.py): which registered model has which, the
evaluators' error for a model that lacks one, and the features evaluators read through them
equal what the evaluators computed before they asked for capabilities (shape sniffing)."""

import jax
import numpy as np
import pytest

from bigvl import evaluators, models
from bigvl.models.capabilities import (ImageCaptioner, ImageEmbedder, ImageTextEmbedder,
                                       InterleavedLM, PatchEmbedder, TextEmbedder, methods)
from bigvl.registry import MODELS

pytestmark = pytest.mark.unit

TOWER = dict(width=32, depth=1, mlp_dim=64, num_heads=4)
PROTOCOLS = (ImageEmbedder, TextEmbedder, ImageTextEmbedder, ImageCaptioner, InterleavedLM,
             PatchEmbedder)

# Registered model name -> the capabilities it has (and no others).
HAS = {
    "vit": {ImageEmbedder, PatchEmbedder},
    "text": set(),
    "two_towers": {ImageEmbedder, TextEmbedder, ImageTextEmbedder, PatchEmbedder},
    "siglip2": {ImageEmbedder, TextEmbedder, ImageTextEmbedder, PatchEmbedder},
    "captioner": {ImageEmbedder, ImageCaptioner},
    "coca": {ImageEmbedder, TextEmbedder, ImageTextEmbedder, ImageCaptioner},
    "mae": {ImageEmbedder},
    "simmim": {ImageEmbedder},
    "dino": {ImageEmbedder},
    "lm": set(),
    "flamingo": {InterleavedLM},
}


def test_every_registered_model_has_exactly_its_capabilities():
  assert set(MODELS.names()) == set(HAS), "classify a new model in HAS"
  for name, has in HAS.items():
    model = models.build(dict(name=name))  # Unbound: setup does not run.
    got = {p for p in PROTOCOLS if isinstance(model, p)}
    assert got == has, (name, sorted(p.__name__ for p in got))


def test_protocol_methods_are_listed_with_their_required_arguments():
  assert methods(ImageEmbedder) == {"embed_image": "embed_image(image)"}
  assert methods(ImageTextEmbedder) == {"embed_text": "embed_text(text)",
                                        "embed_image_joint": "embed_image_joint(image)"}
  assert list(methods(ImageCaptioner).values()) == [
      "encode(image)", "caption_logits(memory, text)", "decode_step(prev, memory)"]


def _ctx(model):
  return evaluators.EvalContext(model=model, tokenizer=None, text_len=16, mesh=None, rules=None)


@pytest.mark.parametrize("model_cfg, eval_cfg, message", [
    (dict(name="text", vocab_size=32, **TOWER), dict(name="fewshot"),
     "evaluator 'fewshot' needs a model with embed_image(image); TextTransformer has none"),
    (dict(name="lm", vocab_size=32), dict(name="knn"),
     "evaluator 'knn' needs a model with embed_image(image); CausalLM has none"),
    (dict(name="vit", **TOWER), dict(name="zeroshot"),
     "evaluator 'zeroshot' needs a model with embed_text(text) and embed_image_joint(image); "
     "ViT has no embed_text, embed_image_joint"),
    (dict(name="captioner"), dict(name="retrieval"),
     "evaluator 'retrieval' needs a model with embed_text(text) and embed_image_joint(image); "
     "Captioner has no embed_text, embed_image_joint"),
    (dict(name="two_towers"), dict(name="captioning"),
     "evaluator 'captioning' needs a model with encode(image), caption_logits(memory, text) and "
     "decode_step(prev, memory); TwoTowers has no encode, caption_logits, decode_step"),
    (dict(name="vit"), dict(name="scoring_zeroshot"), "evaluator 'scoring_zeroshot' needs"),
    (dict(name="mae"), dict(name="perplexity"), "evaluator 'perplexity' needs"),
    (dict(name="coca"), dict(name="in_context"),
     "evaluator 'in_context' needs a model with encode_media(images) and lm_logits(media, "
     "tokens); CoCa has no encode_media, lm_logits"),
])
def test_an_evaluator_refuses_a_model_without_its_capability(model_cfg, eval_cfg, message):
  with pytest.raises(ValueError) as e:
    evaluators.build("e", dict(eval_cfg, data=dict(name="digits")), _ctx(models.build(model_cfg)))
  assert str(e.value).startswith(message)
  assert "\n" not in str(e.value)


def _init(cfg, *inputs):
  model = models.build(cfg)
  return model, model.init(jax.random.PRNGKey(0), *inputs)["params"]


IMAGES = np.random.default_rng(0).normal(size=(3, 16, 16, 1)).astype(np.float32)
TEXT = np.random.default_rng(1).integers(3, 32, size=(3, 16)).astype(np.int32)
TEXT_OPTS = dict(vocab_size=32, max_len=16, **TOWER)


def _old_probe_features(model, params, images):
  """The probe evaluators' features before capabilities (bigvl/evaluators/probes.py), for the
  models that had no `embed_image` then (MAE, SimMIM and DINO had, and keep theirs)."""
  if hasattr(model, "encode"):
    return model.apply({"params": params}, images, method="encode").mean(axis=1)
  out = model.apply({"params": params}, images, None, train=False) \
      if hasattr(model, "image") and hasattr(model, "text") else \
      model.apply({"params": params}, images, train=False)
  if len(out) == 3:
    return out[0]
  feats, extras = out
  feats = extras.get("pre_logits", feats)
  return feats.mean(axis=1) if feats.ndim == 3 else feats


@pytest.mark.parametrize("cfg, with_text", [
    (dict(name="two_towers", image=dict(patch_size=4, pool="gap", **TOWER), text=TEXT_OPTS,
          embed_dim=16), True),
    (dict(name="two_towers", image=dict(patch_size=4, pool="map", **TOWER),
          text=dict(TEXT_OPTS, num_classes=32), bias_init=-10.0), True),  # SigLIP-style.
    (dict(name="vit", patch_size=4, pool="gap", **TOWER), False),
    (dict(name="vit", patch_size=4, pool="none", **TOWER), False),
    (dict(name="vit", patch_size=4, pool="cls", rep_size=24, num_classes=10, **TOWER), False),
    (dict(name="captioner", image=dict(patch_size=4, posemb="learn", **TOWER),
          decoder=TEXT_OPTS), True),
    (dict(name="coca", image=dict(patch_size=4, posemb="learn", **TOWER), embed_dim=16,
          decoder=dict(TEXT_OPTS, unimodal_depth=1)), True),
])
def test_probe_features_equal_the_old_shape_sniffing(cfg, with_text):
  model, params = _init(cfg, IMAGES[:1], *([TEXT[:1]] if with_text else []))
  new = model.apply({"params": params}, IMAGES, method="embed_image")
  old = _old_probe_features(model, params, IMAGES)
  assert new.shape == old.shape and new.ndim == 2
  np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


@pytest.mark.parametrize("cfg", [
    dict(name="two_towers", image=dict(patch_size=4, pool="gap", **TOWER), text=TEXT_OPTS,
         embed_dim=16),
    dict(name="coca", image=dict(patch_size=4, posemb="learn", **TOWER), embed_dim=16,
         decoder=dict(TEXT_OPTS, unimodal_depth=1)),
])
def test_joint_embeddings_equal_what_zeroshot_and_retrieval_read_before(cfg):
  model, params = _init(cfg, IMAGES[:1], TEXT[:1])
  # zeroshot.py / retrieval.py before: apply(image, None)[0] and apply(None, text)[1].
  old_img = model.apply({"params": params}, IMAGES, None, train=False)[0]
  old_txt = model.apply({"params": params}, None, TEXT, train=False)[1]
  np.testing.assert_array_equal(
      np.asarray(model.apply({"params": params}, IMAGES, method="embed_image_joint")), old_img)
  np.testing.assert_array_equal(
      np.asarray(model.apply({"params": params}, TEXT, method="embed_text")), old_txt)


def test_an_image_only_two_tower_model_says_it_has_no_text_tower():
  model, params = _init(dict(name="two_towers", image=dict(patch_size=4, **TOWER)), IMAGES[:1])
  with pytest.raises(ValueError, match="no text tower"):
    model.apply({"params": params}, TEXT, method="embed_text")
