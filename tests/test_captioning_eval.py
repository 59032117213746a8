"""Captioning evaluators on a small random captioner: they compute what they claim."""

import jax
import numpy as np
import pytest

from bigvl import decoding, models, sharding as sh
from bigvl.data import shapes, tokenizer as tok_lib, transforms
from bigvl.evaluators import EvalContext, captioning, caption_metrics

TOWER = dict(width=32, depth=1, mlp_dim=64, num_heads=4)


@pytest.fixture(scope="module")
def ctx_params():
  tok = tok_lib.train(shapes.Shapes("train", n=2000).texts(), vocab_size=64)
  model = models.build(dict(name="captioner", image=dict(patch_size=8, posemb="learn", **TOWER),
                            decoder=dict(vocab_size=tok.vocab_size, max_len=16, **TOWER)))
  mesh = sh.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  rules = sh.get_rules("dp")
  ctx = EvalContext(model=model, tokenizer=tok, text_len=16, mesh=mesh, rules=rules)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32),
                      np.zeros((1, 16), np.int32))["params"]
  return ctx, params


@pytest.mark.integration
def test_captioning_eval_scores_the_greedy_captions(ctx_params):
  ctx, params = ctx_params
  ev = captioning.CaptioningEval(ctx, data=dict(name="shapes", split="test", n=40,
                                                pp="value_range(-1, 1)"), batch_size=16, show=0)
  generated = ev.generate(params)
  assert sorted(generated) == list(range(40))
  # The same captions as decoding directly.
  src = shapes.Shapes("test", n=40)
  pp = transforms.build("value_range(-1, 1)")
  images = np.stack([pp(src[i], None)["image"] for i in range(5)])
  memory = ctx.model.apply({"params": params}, images, method="encode")
  ids, _ = decoding.greedy(ctx.model, params, memory, max_len=16, eos_id=2)
  assert [ctx.tokenizer.decode(s) for s in np.asarray(ids)] == [generated[i] for i in range(5)]
  metrics = ev.run(params)
  refs = [list(src[i]["texts"]) for i in range(40)]
  cands = [generated[i] for i in range(40)]
  assert metrics["bleu4"] == pytest.approx(caption_metrics.bleu(cands, refs)["bleu4"])
  assert metrics["cider"] == pytest.approx(caption_metrics.cider_d(cands, refs))
  assert 0.0 <= metrics["exact_match"] <= 1.0


@pytest.mark.unit
def test_scoring_zeroshot_picks_the_most_likely_prompt(ctx_params):
  ctx, params = ctx_params
  ev = captioning.ScoringZeroShot(ctx, data=dict(name="shapes", split="test", task="color",
                                                 n=24, pp="value_range(-1, 1)"), batch_size=8)
  src = shapes.Shapes("test", n=24, task="color")
  pp = transforms.build("value_range(-1, 1)")
  images = np.stack([pp(src[i], None)["image"] for i in range(24)])
  memory = ctx.model.apply({"params": params}, images, method="encode")
  prompts = [t.format(c) for c in src.class_names for t in src.templates]
  scores = np.stack([np.asarray(decoding.sequence_logprob(
      ctx.model, params, memory, np.repeat(ctx.tokenizer.encode(p, 16)[None], 24, 0), eos_id=2))
      for p in prompts], 1).reshape(24, len(src.class_names), len(src.templates)).mean(-1)
  labels = np.array([int(src[i]["label"]) for i in range(24)])
  assert ev.run(params)["top1"] == pytest.approx(np.mean(scores.argmax(1) == labels))


@pytest.mark.integration
def test_scoring_zeroshot_takes_named_lists(ctx_params):
  """class_names="imagenet" / templates="clip7" are the shipped lists, as for `zeroshot`
  (a string was once read as a list of its characters)."""
  from bigvl.evaluators import class_names as cn
  ctx, _ = ctx_params
  ev = captioning.ScoringZeroShot(ctx, data=dict(name="shapes", split="test", task="color",
                                                 n=8, pp="value_range(-1, 1)"),
                                  class_names="imagenet", templates="clip7", batch_size=8)
  assert ev.class_names == list(cn.class_names("imagenet")) and len(ev.class_names) == 1000
  assert ev.templates == list(cn.templates("clip7"))


@pytest.mark.integration
@pytest.mark.slow
def test_perplexity_is_exp_of_the_captioning_loss_over_all_tokens(ctx_params):
  from bigvl.objectives.captioning import caption_loss
  ctx, params = ctx_params
  pp = "value_range(-1, 1)|choose_text|tokenize"
  # Batches of 16 over 40 examples: the last one padded, which must not count.
  out = captioning.Perplexity(ctx, data=dict(name="shapes", split="test", n=40, pp=pp),
                              batch_size=16).run(params)
  src = shapes.Shapes("test", n=40)
  op = transforms.build(pp, tokenizer=ctx.tokenizer, text_len=16)
  ex = [op(src[i], None) for i in range(40)]
  images, text = np.stack([e["image"] for e in ex]), np.stack([e["text"] for e in ex])
  logits = ctx.model.apply({"params": params}, images, text)
  loss, _ = caption_loss(logits, text)   # Mean over every caption token of all 40.
  np.testing.assert_allclose(out["nll_per_token"], float(loss), rtol=1e-5)
  np.testing.assert_allclose(out["perplexity"], np.exp(float(loss)), rtol=1e-5)


@pytest.mark.unit
def test_captioning_evals_refuse_a_two_tower_model(ctx_params):
  ctx, _ = ctx_params
  other = EvalContext(model=models.build(dict(name="vit", patch_size=8, **TOWER)),
                      tokenizer=ctx.tokenizer, text_len=16, mesh=ctx.mesh, rules=ctx.rules)
  with pytest.raises(ValueError, match="evaluator 'captioning' needs a model with encode"):
    captioning.CaptioningEval(other, data=dict(name="shapes", split="test"))


@pytest.mark.integration
@pytest.mark.slow
def test_captioning_eval_images_show_each_image_over_its_caption(ctx_params):
  ctx, params = ctx_params
  ev = captioning.CaptioningEval(ctx, data=dict(name="shapes", split="test", n=8,
                                                pp="value_range(-1, 1)"),
                                 batch_size=8, show=0, num_images=3)
  ev.run(params)
  grid = ev.images()["captions"]
  assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
  src = shapes.Shapes("test", n=8)
  first = transforms.build("value_range(-1, 1)")(src[0], None)["image"]
  h, w = first.shape[:2]
  tile_w = (grid.shape[1] - 3 * 2) // 3
  left = (tile_w - 4 * w) // 2
  expected = np.round(np.clip((first + 1) / 2, 0, 1) * 255).astype(np.uint8)
  np.testing.assert_array_equal(grid[:4 * h:4, left:left + 4 * w:4], expected)
  # Under the images, the caption band has text (dark pixels) in every tile.
  band = grid[4 * h:]
  for i in range(3):
    assert (band[:, i * (tile_w + 2):(i + 1) * (tile_w + 2)] < 100).any()
