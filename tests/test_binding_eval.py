"""The `binding` evaluator (Frozen's fast binding): seeded k-shot N-way episodes on held-out
images, scored by the likelihood of each fresh name. Integration and slow: a Flamingo is
built and compiled for several prompt lengths (about 45 s)."""

import jax
import numpy as np
import pytest

from bigvl import models, sharding as sh
from bigvl.data import sources, tokenizer as tok_lib
from bigvl.evaluators import EvalContext, build

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INNER = dict(name="digits", split="train")
PP = "resize(16)|value_range(-1, 1)"


@pytest.fixture(scope="module")
def flamingo_ctx():
  src = sources.build(dict(name="binding", inner=INNER))
  tok = tok_lib.train(src.texts(), vocab_size=96, special_tokens=("<image>", "<|endofchunk|>"))
  tower = dict(width=32, depth=1, mlp_dim=64, num_heads=4)
  model = models.build(dict(
      name="flamingo", vision=dict(patch_size=4, **tower),
      lm=dict(vocab_size=tok.vocab_size, max_len=176, **tower),
      resampler=dict(depth=1, num_latents=4, num_heads=4, mlp_dim=64),
      xattn=dict(num_heads=4, mlp_dim=64), image_token_id=tok.piece_id("<image>")))
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 2, 16, 16, 1), np.float32),
                      np.zeros((1, 8), np.int32))["params"]
  ctx = EvalContext(model=model, tokenizer=tok, text_len=176,
                    mesh=sh.make_mesh(dict(data=-1, fsdp=1, tensor=1)), rules=sh.get_rules("dp"))
  return ctx, params


def _evaluator(ctx, **kw):
  return build("binding", dict(name="binding", data=dict(name="digits", split="test", pp=PP),
                               **kw), ctx)


def test_episodes_nest_hold_k_shots_per_class_and_never_show_the_query(flamingo_ctx):
  ctx, _ = flamingo_ctx
  ev = _evaluator(ctx, ways=5, shots=(0, 1, 2, 4, 8), episodes=30, seed=3)
  for e in range(30):
    d = ev.episode(e)
    assert len(set(d["names"])) == 5 and 0 <= d["target"] < 5
    prev = []
    for k in (0, 1, 2, 4, 8):
      text, records = ev.prompt_of(e, k)
      assert len(records) == 5 * k and d["query"] not in records
      for n in d["names"]:
        assert text.count(f"<image>{n}<|endofchunk|>") == k
      # The k-shot supports are the (k+1)-shot ones less some, in the same order.
      assert [r for r in records if r in prev] == prev
      prev = records
    # The query is of the target's class; every support of a name is of one class.
    labels = {r: int(ev.support[r]["label"]) for r in ev.prompt_of(e, 8)[1]}
    query_class = int(ev.query[d["query"]]["label"])
    target_records = [r for (r, w) in d["supports"] if w == d["target"]]
    assert {labels[r] for r in target_records} == {query_class}
  # Seeded: the same seed draws the same episodes; another seed others.
  again = _evaluator(ctx, ways=5, shots=(0, 8), episodes=30, seed=3)
  other = _evaluator(ctx, ways=5, shots=(0, 8), episodes=30, seed=4)
  queries = lambda x: [x.episode(e)["query"] for e in range(30)]
  assert queries(again) == queries(ev) and queries(other) != queries(ev)


def test_an_untrained_model_is_at_chance_and_the_scores_are_the_chunks_likelihoods(flamingo_ctx):
  ctx, params = flamingo_ctx
  ev = _evaluator(ctx, ways=5, shots=(0, 2), episodes=100, seed=0)
  out = ev.run(params)
  assert set(out) == {"0shot/top1", "2shot/top1"}
  # 100 episodes at chance 0.2: 4 standard deviations is 0.16.
  assert abs(out["0shot/top1"] - 0.2) < 0.16 and abs(out["2shot/top1"] - 0.2) < 0.16
  # One episode's scores by hand: the LM's log-likelihood of the query chunk's tokens.
  scores = ev.scores(params, np.array([7]), 2)[0]
  d = ev.episode(7)
  prefix, records = ev.prompt_of(7, 2)
  images = ev.prompt_images(7, 2)[None]
  assert images.shape[1] == len(records) + 1 == 11
  for w, name in enumerate(d["names"]):
    ids = ctx.tokenizer.encode([prefix + f"<image>{name}<|endofchunk|>"], 176)
    logits = ctx.model.apply({"params": params}, images, ids)
    logp = np.asarray(jax.nn.log_softmax(logits[0, :-1]))
    last_image = int(np.flatnonzero(ids[0] == ctx.tokenizer.piece_id("<image>"))[-1])
    end = int(np.flatnonzero(ids[0] == ctx.tokenizer.eos_id)[0])
    expected = sum(logp[t - 1, ids[0, t]] for t in range(last_image + 1, end + 1))
    np.testing.assert_allclose(scores[w], expected, rtol=1e-4, atol=1e-4)


def test_an_evaluation_that_cannot_be_built_says_why(flamingo_ctx):
  ctx, _ = flamingo_ctx
  with pytest.raises(ValueError, match="fewer than max\\(shots\\)=40 \\+ the query"):
    _evaluator(ctx, shots=(0, 40), episodes=2)
  with pytest.raises(ValueError, match="8-shot 5-way prompt does not fit text_len=40"):
    _evaluator(ctx, shots=(8,), episodes=2, text_len=40).run(flamingo_ctx[1])
