"""DINO: the teacher and centre live in the objective state (never params), no gradient
reaches them, the EMA and the centre update against NumPy, multi-crop batches."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigvl import models, objectives, optim, state as state_lib, step as step_lib
from bigvl.data import digits, transforms
from bigvl.objectives.dino import koleo_loss, sinkhorn_knopp, teacher_momentum

BACKBONE = dict(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=4, pool="gap")


def _setup(total_steps=100, **obj):
  model = models.build(dict(name="dino", backbone=BACKBONE, out_dim=64, hidden_dim=32,
                            bottleneck_dim=16))
  objective = objectives.build(dict(name="dino", **obj), total_steps)
  rng = np.random.default_rng(0)
  batch = {"crops_global": jnp.asarray(rng.normal(size=(4, 2, 16, 16, 1)), jnp.float32),
           "crops_local": jnp.asarray(rng.normal(size=(4, 3, 8, 8, 1)), jnp.float32)}
  return model, objective, batch


def _optimizer(objective, total_steps=100):
  cfg = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-2, schedule="constant", warmup_steps=0, min_lr_ratio=0.0, b1=0.9,
      b2=0.999, weight_decay=0.1, wd_pattern=r".*/kernel$", grad_clip=1.0, frozen_pattern=""))
  return optim.make_optimizer(cfg, total_steps)


def _state(model, objective, batch, tx):
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  init = state_lib.init_fn(model, objective, tx, spec)
  return jax.jit(init)(jax.random.PRNGKey(0))


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), nn.unbox(tree))


def _loss(objective, model, params, objective_state, batch, rng=jax.random.PRNGKey(1),
          train=True):
  return objective.loss(model, params, batch, rng, train=train,
                        objective_state=objective_state)


@pytest.mark.integration
@pytest.mark.slow  # Over 15 s: keeps the default run near 10 minutes; CI runs it.
def test_teacher_starts_as_the_student_lives_outside_params_and_gets_no_gradient():
  model, objective, batch = _setup()
  tx, _ = _optimizer(objective)
  state = _state(model, objective, batch, tx)
  params, ostate = state.params, state.objective_state
  # The params are the student alone; teacher and centre are the objective's state.
  assert set(params) == {"student"} and set(ostate) == {"teacher", "center"}
  jax.tree.map(np.testing.assert_array_equal, _np(ostate["teacher"]), _np(params))
  # The teacher keeps the student's logical axes, so it is sharded the same way.
  specs = lambda t: jax.tree.leaves(nn.get_partition_spec(t))
  assert specs(ostate["teacher"]) == specs(params)
  grad_state = jax.jit(jax.grad(lambda s: _loss(objective, model, params, s, batch)[0]))(ostate)
  for leaf in jax.tree.leaves(nn.unbox(grad_state)):
    assert not np.any(np.asarray(leaf))
  # ... while the student does learn from the same loss.
  grads = jax.jit(jax.grad(lambda p: _loss(objective, model, p, ostate, batch)[0]))(params)
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(nn.unbox(grads)))
  # The optimizer (and with it the weight-decay / freeze masks, which it applies to the
  # tree it is given) holds moments of the student only: no path names the teacher.
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
  assert paths and not any("teacher" in p or "center" in p for p in paths)
  n_student = sum(x.size for x in jax.tree.leaves(nn.unbox(params)))
  n_moments = sum(x.size for x in jax.tree.leaves(nn.unbox(state.opt_state))
                  if hasattr(x, "size") and x.ndim > 0)
  assert n_moments == 2 * n_student
  assert objective.eval_params(params, ostate) is ostate["teacher"]


@pytest.mark.integration
@pytest.mark.slow  # Over 10 s on 2 cores: the default suite stays under 10 minutes.
def test_teacher_ema_and_centre_match_numpy():
  model, objective, batch = _setup(total_steps=100, teacher_momentum=0.9,
                                   center_momentum=0.8)
  tx, schedule = _optimizer(objective)
  state = _state(model, objective, batch, tx)
  # A few steps first, so that teacher, student and centre all differ.
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=model, objective=objective,
                                                  tx=tx, schedule=schedule))
  for _ in range(3):
    state, _ = step(state, batch)
  old = _np(state.objective_state)
  glob = np.asarray(batch["crops_global"]).swapaxes(0, 1).reshape(8, 16, 16, 1)
  teacher_out = np.asarray(model.apply({"params": state.objective_state["teacher"]}, glob),
                           np.float64)
  k = int(state.step)
  new_state, _ = step(state, batch)
  new, new_student = _np(new_state.objective_state), _np(new_state.params)

  m = 1 - (1 - 0.9) * (np.cos(np.pi * k / 100) + 1) / 2
  expected = jax.tree.map(lambda t, s: m * t + (1 - m) * s, old["teacher"], new_student)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
               new["teacher"], expected)
  np.testing.assert_allclose(new["center"], 0.8 * old["center"] + 0.2 * teacher_out.mean(0),
                             rtol=0, atol=1e-6)
  kernel = lambda t: t["student"]["backbone"]["embedding"]["kernel"]
  assert not np.allclose(kernel(new["teacher"]), kernel(old["teacher"]))


@pytest.mark.unit
def test_momentum_schedule_is_a_cosine_to_one():
  np.testing.assert_allclose(teacher_momentum(0, 0.996, 1000), 0.996, rtol=1e-7)
  np.testing.assert_allclose(teacher_momentum(500, 0.996, 1000), 0.998, rtol=1e-7)
  np.testing.assert_allclose(teacher_momentum(1000, 0.996, 1000), 1.0, rtol=1e-7)


@pytest.mark.integration
@pytest.mark.slow
def test_loss_is_the_cross_entropy_over_crop_pairs():
  model, objective, batch = _setup(student_temp=0.1, teacher_temp=0.04)
  tx, _ = _optimizer(objective)
  state = _state(model, objective, batch, tx)
  params = state.params
  ostate = {**state.objective_state, "center": jnp.linspace(-1, 1, 64)}
  loss, _ = jax.jit(lambda p: _loss(objective, model, p, ostate, batch, jax.random.PRNGKey(0),
                                    train=False))(params)
  crop_major = lambda x: np.asarray(x).swapaxes(0, 1).reshape((-1,) + x.shape[2:])
  s = [np.asarray(model.apply({"params": params}, crop_major(batch[k])), np.float64)
       for k in ("crops_global", "crops_local")]
  s = np.concatenate(s).reshape(5, 4, 64) / 0.1
  s = s - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
      s.max(-1, keepdims=True)
  t = np.asarray(model.apply({"params": ostate["teacher"]},
                             crop_major(batch["crops_global"])), np.float64)
  t = (t - np.linspace(-1, 1, 64)) / 0.04
  t = np.exp(t - t.max(-1, keepdims=True))
  t = (t / t.sum(-1, keepdims=True)).reshape(2, 4, 64)
  terms = [-(t[i] * s[v]).sum(-1).mean() for i in range(2) for v in range(5) if v != i]
  np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)


@pytest.mark.unit
def test_multi_crop_shapes_and_determinism():
  op = transforms.build("multi_crop(16, 8, num_global=2, num_local=3, channels=1)|"
                        "value_range(-1, 1, key='crops_global')")
  ex = digits.Digits("train")[0]
  a = op(ex, np.random.default_rng(1))
  b = op(ex, np.random.default_rng(1))
  assert a["crops_global"].shape == (2, 16, 16, 1) and a["crops_global"].dtype == np.float32
  assert a["crops_local"].shape == (3, 8, 8, 1) and a["crops_local"].dtype == np.uint8
  assert "image" not in a
  np.testing.assert_array_equal(a["crops_local"], b["crops_local"])
  assert not np.array_equal(a["crops_local"][0], a["crops_local"][1])  # Independent crops.


@pytest.mark.unit
def test_dino_objective_explains_a_batch_without_crops():
  model, objective, batch = _setup()
  with pytest.raises(ValueError, match="multi_crop"):
    _loss(objective, model, {}, {}, {"image": batch["crops_global"][:, 0]})


@pytest.mark.unit
def test_frozen_pattern_keeps_params_fixed():
  params = {"img": {"kernel": jnp.ones((2, 2))}, "txt": {"kernel": jnp.ones((2, 2))}}
  cfg = ml_collections.ConfigDict(dict(
      name="adamw", lr=0.1, schedule="constant", warmup_steps=0, min_lr_ratio=0.0, b1=0.9,
      b2=0.999, weight_decay=0.1, wd_pattern=r".*/kernel$", grad_clip=1.0,
      frozen_pattern="img/.*"))
  tx, _ = optim.make_optimizer(cfg, 10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert not np.any(np.asarray(updates["img"]["kernel"]))
  assert np.all(np.asarray(updates["txt"]["kernel"]) != 0)


def _np_sinkhorn(scores, iters):
  q = np.exp(scores - scores.max()).T        # (K, n), as DINOv2 holds it.
  k, n = q.shape
  q /= q.sum()
  for _ in range(iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= n
  return (q * n).T


@pytest.mark.unit
def test_sinkhorn_knopp_matches_numpy_and_balances_the_batch():
  rng = np.random.default_rng(0)
  # Nearly identical rows (as at init): a softmax would give every row the same target.
  scores = (1.0 + 0.03 * rng.normal(size=(16, 8))) / 0.04
  got = np.asarray(sinkhorn_knopp(jnp.asarray(scores, jnp.float32), 3), np.float64)
  np.testing.assert_allclose(got, _np_sinkhorn(scores, 3), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)                 # Rows: distributions.
  np.testing.assert_allclose(got.sum(0), 16 / 8, rtol=0.05)              # Columns: balanced.
  softmax = np.exp(scores - scores.max(1, keepdims=True))
  softmax /= softmax.sum(1, keepdims=True)
  assert np.ptp(got.sum(0)) < 0.1 * np.ptp(softmax.sum(0))


@pytest.mark.unit
def test_koleo_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(12, 5))
  got = float(koleo_loss(jnp.asarray(x, jnp.float32)))
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  d = np.linalg.norm(xn[:, None] - xn[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  np.testing.assert_allclose(got, -np.mean(np.log(d.min(1))), rtol=1e-4)
  # Spreading the points lowers it.
  assert float(koleo_loss(jnp.eye(12))) < float(koleo_loss(jnp.asarray(xn + 3.0, jnp.float32)))


@pytest.mark.integration
@pytest.mark.slow  # Over 10 s on 2 cores: the default suite stays under 10 minutes.
def test_sinkhorn_and_koleo_options_enter_the_loss():
  model, objective, batch = _setup()
  tx, _ = _optimizer(objective)
  state = _state(model, objective, batch, tx)
  params = state.params
  ostate = {**state.objective_state, "center": jnp.linspace(-1, 1, 64)}
  call = lambda o, s=ostate: jax.jit(lambda p: _loss(o, model, p, s, batch,
                                                     jax.random.PRNGKey(0), train=False))(params)
  base, _ = call(objective)
  sk, sk_aux = call(objectives.build(dict(name="dino", centering="sinkhorn"), 100))
  ko, ko_aux = call(objectives.build(dict(name="dino", koleo_weight=0.5), 100))
  assert not np.isclose(float(sk), float(base))   # The centre no longer matters ...
  other_centre, _ = call(objectives.build(dict(name="dino", centering="sinkhorn"), 100),
                         {**ostate, "center": jnp.zeros(64)})
  np.testing.assert_allclose(float(other_centre), float(sk), rtol=1e-6)   # ... at all.
  # KoLeo: the loss gains weight * mean over global crops of the student features' KoLeo.
  crop_major = lambda x: np.asarray(x).swapaxes(0, 1).reshape((-1,) + x.shape[2:])
  _, feats = model.apply({"params": params}, crop_major(batch["crops_global"]),
                         with_features=True)
  feats = np.asarray(feats).reshape(2, 4, -1)
  expected = np.mean([float(koleo_loss(jnp.asarray(f))) for f in feats])
  np.testing.assert_allclose(float(ko_aux.metrics["koleo"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(ko), float(base) + 0.5 * expected, rtol=1e-5)
  assert "koleo" not in sk_aux.metrics


@pytest.mark.unit
def test_bad_centering_is_explained():
  with pytest.raises(ValueError, match="centering"):
    objectives.build(dict(name="dino", centering="mean"), 100)
