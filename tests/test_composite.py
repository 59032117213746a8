"""The composite objective: one term is that objective exactly (loss, gradients, state), two
terms are their weighted sum with each term's metrics, schedules switch terms on and off at
their steps (an off term is not computed), and bad term configs are refused in one line."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigvl import models, objectives, optim, state as state_lib, step as step_lib
from bigvl.objectives.composite import MethodView

pytestmark = pytest.mark.integration

TOWER = dict(width=32, depth=1, mlp_dim=64, num_heads=4)
TWO_TOWERS = dict(name="two_towers", embed_dim=16, temperature_init=10.0, bias_init=-10.0,
                  image=dict(TOWER, patch_size=4, pool="gap", posemb="learn"),
                  text=dict(TOWER, vocab_size=20, max_len=8, pool="last"))


def _batch(seed=0, b=6):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.normal(size=(b, 16, 16, 1)), jnp.float32),
          "text": jnp.asarray(rng.integers(1, 20, size=(b, 8)), jnp.int32)}


def _optimizer(total_steps=100):
  cfg = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-2, schedule="constant", warmup_steps=0, min_lr_ratio=0.0, b1=0.9,
      b2=0.999, weight_decay=0.1, wd_pattern=r".*/kernel$", grad_clip=1.0, frozen_pattern=""))
  return optim.make_optimizer(cfg, total_steps)


def _state(model, objective, batch, tx):
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  return jax.jit(state_lib.init_fn(model, objective, tx, spec))(jax.random.PRNGKey(0))


def _value_and_grad(objective, model, params, batch, ostate, rng=jax.random.PRNGKey(3)):
  kw = {"objective_state": ostate} if state_lib.has_hook(objective, "init_state") else {}

  def f(p):
    loss, aux = objective.loss(model, p, batch, rng, train=True, **kw)
    return loss, (aux.metrics if hasattr(aux, "metrics") else aux)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  return float(loss), metrics, jax.tree.map(np.asarray, nn.unbox(grads))


def _assert_trees_close(a, b, tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


@pytest.mark.parametrize("term", [
    dict(name="siglip"),
    pytest.param(dict(name="clip"), marks=pytest.mark.slow),  # 13 s; siglip's is the same path.
])
def test_one_term_is_that_objective(term):
  model, batch = models.build(TWO_TOWERS), _batch()
  alone = objectives.build(term, 100)
  comp = objectives.build(dict(name="composite", terms=dict(only=term)), 100)
  tx, _ = _optimizer()
  st = _state(model, comp, batch, tx)
  want_loss, want_metrics, want_grads = _value_and_grad(alone, model, st.params, batch, None)
  loss, metrics, grads = _value_and_grad(comp, model, st.params, batch, st.objective_state)
  assert abs(loss - want_loss) <= 1e-6 * max(1.0, abs(want_loss))
  _assert_trees_close(grads, want_grads, 1e-6)
  assert float(metrics["only/loss"]) == pytest.approx(want_loss, abs=1e-6)
  assert float(metrics["only/weight"]) == 1.0
  for k, v in want_metrics.items():     # The term's own metrics, under its name.
    assert float(metrics[f"only/{k}"]) == pytest.approx(float(v), abs=1e-6)


@pytest.mark.slow  # DINO's init and two jitted steps: about 20 s on 2 cores.
def test_one_stateful_term_is_that_objective_through_train_steps():
  """DINO alone and as the only term: the same loss, params and EMA teacher after 2 steps."""
  model = models.build(dict(name="dino", backbone=dict(TOWER, patch_size=4, pool="gap"),
                            out_dim=32, hidden_dim=32, bottleneck_dim=16))
  rng = np.random.default_rng(0)
  batch = {"crops_global": jnp.asarray(rng.normal(size=(4, 2, 16, 16, 1)), jnp.float32),
           "crops_local": jnp.asarray(rng.normal(size=(4, 2, 8, 8, 1)), jnp.float32)}
  tx, schedule = _optimizer()
  results = []
  for cfg in (dict(name="dino"), dict(name="composite", terms=dict(d=dict(name="dino")))):
    objective = objectives.build(cfg, 100)
    st = _state(model, objective, batch, tx)
    step = jax.jit(lambda s, b, o=objective: step_lib.train_step(
        s, b, model=model, objective=o, tx=tx, schedule=schedule))
    losses = []
    for _ in range(2):
      st, m = step(st, batch)
      losses.append(float(m.metrics["train/loss"]))
    teacher = st.objective_state["teacher"] if cfg["name"] == "dino" else \
        st.objective_state["terms"]["d"]["teacher"]
    results.append((losses, nn.unbox(st.params), nn.unbox(teacher), objective, st))
  (l0, p0, t0, dino, _), (l1, p1, t1, comp, st1) = results
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  _assert_trees_close(p1, p0, 1e-6)
  _assert_trees_close(t1, t0, 1e-6)
  assert int(st1.objective_state["step"]) == 2
  # Evaluators see the term's teacher, as they see DINO's.
  _assert_trees_close(nn.unbox(comp.eval_params(st1.params, st1.objective_state)), t1, 0)


@pytest.mark.slow  # 18 s on 2 cores: the default suite stays near 10 minutes.
def test_two_terms_are_the_weighted_sum_with_each_terms_metrics():
  model, batch = models.build(TWO_TOWERS), _batch(1)
  comp = objectives.build(dict(name="composite", terms=dict(
      sig=dict(name="siglip"), soft=dict(name="clip", weight=0.25))), 100)
  tx, _ = _optimizer()
  st = _state(model, comp, batch, tx)
  sig, soft = objectives.build(dict(name="siglip")), objectives.build(dict(name="clip"))
  l_sig, _, g_sig = _value_and_grad(sig, model, st.params, batch, None)
  # The second term's rng is fold_in(rng, 1); neither term here uses randomness.
  l_soft, _, g_soft = _value_and_grad(soft, model, st.params, batch, None)
  loss, metrics, grads = _value_and_grad(comp, model, st.params, batch, st.objective_state)
  assert loss == pytest.approx(l_sig + 0.25 * l_soft, rel=1e-6)
  _assert_trees_close(grads, jax.tree.map(lambda a, b: a + 0.25 * b, g_sig, g_soft), 1e-5)
  assert float(metrics["sig/loss"]) == pytest.approx(l_sig, rel=1e-6)
  assert float(metrics["soft/loss"]) == pytest.approx(l_soft, rel=1e-6)
  assert float(metrics["soft/weight"]) == 0.25
  assert {"sig/t", "sig/b", "soft/t"} <= set(metrics)


@dataclasses.dataclass(frozen=True)
class NanLoss:
  """A term whose loss is NaN: if it were computed while off, 0 * NaN would poison the sum."""

  def loss(self, model, params, batch, rng, *, train=True):
    del model, batch, rng, train
    leaf = jax.tree.leaves(params)[0]
    return jnp.sum(nn.unbox(leaf)) * jnp.nan, {}


@pytest.mark.slow  # Compiles a train step: over 15 s on 2 cores.
def test_schedule_switches_a_term_on_at_its_step_and_an_off_term_is_not_computed(
    monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "composite_test_terms", sys.modules[__name__])
  model, batch = models.build(TWO_TOWERS), _batch(2)
  comp = objectives.build(dict(name="composite", terms=dict(
      sig=dict(name="siglip"),
      late=dict(name="clip", weight=2.0, start_step=3),
      never=dict(name="composite_test_terms:NanLoss", start_fraction=1.0))), 10)
  tx, schedule = _optimizer(10)
  st = _state(model, comp, batch, tx)
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=model, objective=comp, tx=tx,
                                                   schedule=schedule))
  sig, clip = objectives.build(dict(name="siglip")), objectives.build(dict(name="clip"))
  # Both reference losses in one compiled function, from the params before each step.
  refs = jax.jit(lambda p: tuple(o.loss(model, p, batch, jax.random.PRNGKey(0))[0]
                                 for o in (sig, clip)))
  for i in range(5):
    l_sig, l_clip = map(float, refs(st.params))
    st, m = step(st, batch)
    loss, weight = float(m.metrics["train/loss"]), float(m.metrics["train/late/weight"])
    assert weight == (2.0 if i >= 3 else 0.0), (i, weight)
    assert float(m.metrics["train/never/weight"]) == 0.0
    assert np.isfinite(loss) and int(st.skipped_steps) == 0
    want = l_sig + (2.0 * l_clip if i >= 3 else 0.0)
    assert loss == pytest.approx(want, rel=1e-5), i
  assert int(st.objective_state["step"]) == 5


def test_weight_schedule_ramps_and_ends():
  comp = objectives.build(dict(name="composite", terms=dict(
      t=dict(name="siglip", weight=4.0, start_fraction=0.5, ramp_steps=4, end_step=90))), 100)
  term = comp.built[0]
  got = [float(term.weight_at(s)) for s in (0, 49, 50, 51, 52, 53, 60, 89, 90)]
  assert got == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 0.0]


class TwoMethods(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="d")(x)

  def doubled(self, x):
    return 2.0 * self(x)


def test_method_view_runs_the_named_method():
  model, x = TwoMethods(), jnp.ones((2, 4))
  params = model.init(jax.random.PRNGKey(0), x)
  view = MethodView(model, "doubled")
  np.testing.assert_array_equal(np.asarray(view.apply(params, x)),
                                2.0 * np.asarray(model.apply(params, x)))
  # A caller that names its own method keeps it.
  np.testing.assert_array_equal(np.asarray(view.apply(params, x, method="__call__")),
                                np.asarray(model.apply(params, x)))


@pytest.mark.parametrize("terms,match", [
    ({}, "terms is empty"),
    (dict(a=dict(name="nonesuch")), "nonesuch"),
    (dict(a=dict(weight=1.0)), "needs name="),
    (dict(a=dict(name="siglip", start_fraction=1.5)), r"start_fraction=1.5 must be in \[0, 1\]"),
    (dict(a=dict(name="siglip", start_step=5, start_fraction=0.1)), "not both"),
    (dict(a=dict(name="siglip", start_step=50, end_step=10)), "ends .* before it starts"),
    (dict(a=dict(name="siglip", weight=-1.0)), "weight=-1.0 must be >= 0"),
    (dict(a=dict(name="siglip", chunkd=True)), "chunked"),
])
def test_bad_terms_are_explained(terms, match):
  with pytest.raises(ValueError, match=match):
    objectives.build(dict(name="composite", terms=terms), 100)


def test_eval_term_must_name_a_term():
  with pytest.raises(ValueError, match="eval_term='x' is not a term; terms: a"):
    objectives.build(dict(name="composite", terms=dict(a=dict(name="siglip")), eval_term="x"),
                     100)
