"""Frozen-feature evaluators: closed-form ridge probe, kNN, and the evaluators on a model."""

import jax
import numpy as np
import pytest

from bigvl import models, sharding as sh
from bigvl.data import digits, tokenizer as tok_lib
from bigvl.evaluators import EvalContext, build
from bigvl.evaluators.probes import knn_classifier, ridge_classifier

pytestmark = pytest.mark.unit


def _clusters(n_per, num_classes, d=8, spread=0.3, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, d)) * 3
  y = np.repeat(np.arange(num_classes), n_per)
  return centres[y] + spread * rng.normal(size=(len(y), d)), y


def test_ridge_is_the_closed_form_least_squares_solution():
  x, y = _clusters(20, 3)
  predict = ridge_classifier(x, y, 3, l2=0.5)
  # The same classifier from an explicit augmented solve, bias unpenalised.
  xc = x - x.mean(0)
  t = 2.0 * np.eye(3)[y] - 1.0
  w = np.linalg.solve(xc.T @ xc + 0.5 * np.eye(x.shape[1]), xc.T @ (t - t.mean(0)))
  q = np.random.default_rng(1).normal(size=(50, x.shape[1])) * 3
  np.testing.assert_array_equal(predict(q), np.argmax((q - x.mean(0)) @ w + t.mean(0), 1))
  xt, yt = _clusters(10, 3, seed=0)
  assert np.mean(predict(xt) == yt) == 1.0


def test_knn_votes_by_similarity():
  x = np.array([[1, 0], [1, .1], [0, 1], [-1, 0]], np.float32)
  y = np.array([0, 0, 1, 2])
  predict = knn_classifier(x, y, 3, k=3)
  # [1, .05]'s 3 nearest: two of class 0 and the class 1 point: class 0 wins.
  assert predict(np.array([[1, .05], [-.1, 1], [-1, -.1]])).tolist() == [0, 1, 2]
  assert knn_classifier(x, y, 3, k=1)(np.array([[0.1, 1]])).tolist() == [1]


@pytest.fixture(scope="module")
def ctx_params():
  tok = tok_lib.train(digits.Digits("train").texts(), vocab_size=96)
  tower = dict(width=32, depth=1, mlp_dim=64, num_heads=4)
  model = models.build(dict(name="two_towers", image=dict(patch_size=4, pool="gap", **tower),
                            text=dict(vocab_size=tok.vocab_size, max_len=16, **tower),
                            embed_dim=32))
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 1), np.float32),
                      np.zeros((1, 16), np.int32))["params"]
  ctx = EvalContext(model=model, tokenizer=tok, text_len=16,
                    mesh=sh.make_mesh(dict(data=-1, fsdp=1, tensor=1)), rules=sh.get_rules("dp"))
  return ctx, params


def test_fewshot_and_knn_evaluators_on_frozen_features(ctx_params):
  ctx, params = ctx_params
  pp = "resize(16)|value_range(-1, 1)"
  data = dict(name="digits", split="test", pp=pp)
  few = build("f", dict(name="fewshot", data=data, shots=(1, 10)), ctx).run(params)
  knn = build("k", dict(name="knn", data=data, k=10), ctx).run(params)
  assert set(few) == {"1shot", "10shot", "linear"} and set(knn) == {"top1"}
  # Even random features separate digits far above chance (0.1); more shots help.
  assert few["linear"] > 0.5 and knn["top1"] > 0.5
  assert few["10shot"] > few["1shot"]
  with pytest.raises(ValueError, match="k=0 must be >= 1"):
    build("k", dict(name="knn", data=data, k=0), ctx)
