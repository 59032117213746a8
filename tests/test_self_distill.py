"""SigLIP 2's self-distillation (SILC local-to-global + TIPS masked prediction): the loss
against a NumPy computation from the heads' outputs, gradients reach the image tower and
heads only, the teacher is an EMA of them, and it trains as a late term of a composite with
SigLIP."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigvl import models, objectives, optim, state as state_lib, step as step_lib
from bigvl.data import transforms

pytestmark = pytest.mark.integration

TOWER = dict(width=32, depth=1, mlp_dim=64, num_heads=4)
MODEL = dict(name="siglip2", temperature_init=10.0, bias_init=-10.0,
             image=dict(TOWER, patch_size=4, pool="map", posemb="learn", posemb_grid=4),
             text=dict(TOWER, vocab_size=20, max_len=8, pool="last", num_classes=32),
             distill=dict(out_dim=24, hidden_dim=16, bottleneck_dim=8))


def _batch(seed=0, b=3, crops=2):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.normal(size=(b, 16, 16, 1)), jnp.float32),
          "text": jnp.asarray(rng.integers(1, 20, size=(b, 8)), jnp.int32),
          "crops_local": jnp.asarray(rng.normal(size=(b, crops, 8, 8, 1)), jnp.float32)}


def _state(model, objective, batch, total_steps=10):
  cfg = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-2, schedule="constant", warmup_steps=0, min_lr_ratio=0.0, b1=0.9,
      b2=0.999, weight_decay=0.0, wd_pattern=r".*/kernel$", grad_clip=1.0, frozen_pattern=""))
  tx, schedule = optim.make_optimizer(cfg, total_steps)
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  return jax.jit(state_lib.init_fn(model, objective, tx, spec))(jax.random.PRNGKey(0)), tx, \
      schedule


def _perturbed(tree, seed, scale=0.05):
  leaves, treedef = jax.tree.flatten(nn.unbox(tree))
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


def _np_ce(student, teacher, center, ts, tt):
  s = np.asarray(student, np.float64) / ts
  t = (np.asarray(teacher, np.float64) - np.asarray(center, np.float64)) / tt
  log_s = s - s.max(-1, keepdims=True)
  log_s -= np.log(np.exp(log_s).sum(-1, keepdims=True))
  p_t = np.exp(t - t.max(-1, keepdims=True))
  p_t /= p_t.sum(-1, keepdims=True)
  return -(p_t * log_s).sum(-1)


@pytest.mark.slow  # About 35 s on 2 cores (several model applies outside jit).
def test_loss_is_silc_plus_masked_prediction_against_numpy():
  model, batch = models.build(MODEL), _batch()
  sd = objectives.build(dict(name="self_distill", local_weight=0.7, masked_weight=1.3,
                             mask_ratio=0.5), 10)
  st, _, _ = _state(model, sd, batch)
  params = nn.unbox(st.params)
  # A teacher and centres unlike their initial values, so that every input matters.
  ostate = dict(st.objective_state, teacher=_perturbed(st.objective_state["teacher"], 1),
                center_global=jnp.linspace(-1, 1, 24), center_patches=jnp.linspace(1, -1, 24))
  rng = jax.random.PRNGKey(5)
  loss, aux = jax.jit(lambda p, s: sd.loss(model, p, batch, rng, train=True,
                                           objective_state=s))(params, ostate)

  feats = lambda p, x, **kw: model.apply({"params": p}, x, method="distill_features", **kw)
  teacher = feats({**params, **ostate["teacher"]}, batch["image"])
  crops = batch["crops_local"]
  local_s = feats(params, crops.swapaxes(0, 1).reshape((-1, 8, 8, 1)))["global"]
  local_s = np.asarray(local_s).reshape(2, 3, -1)
  local = _np_ce(local_s, np.asarray(teacher["global"])[None], ostate["center_global"],
                 0.1, 0.04).mean()
  mask = np.asarray(sd.patch_mask(model, jax.random.fold_in(rng, 2), batch["image"]))
  assert mask.shape == (3, 16) and (mask.sum(1) == 8).all()
  masked_s = feats(params, batch["image"], mask=jnp.asarray(mask))["patches"]
  per_patch = _np_ce(masked_s, teacher["patches"], ostate["center_patches"], 0.1, 0.04)
  masked = per_patch[mask].mean()
  assert float(aux.metrics["local"]) == pytest.approx(local, rel=1e-5)
  assert float(aux.metrics["masked"]) == pytest.approx(masked, rel=1e-5)
  assert float(loss) == pytest.approx(0.7 * local + 1.3 * masked, rel=1e-5)
  # The unmasked patches do not enter: their loss differs from the masked ones' mean.
  assert abs(per_patch[~mask].mean() - masked) > 1e-4


@pytest.mark.slow  # About 20 s on 2 cores.
def test_gradients_reach_the_image_tower_and_heads_only_and_the_teacher_is_an_ema():
  model, batch = models.build(MODEL), _batch(1)
  sd = objectives.build(dict(name="self_distill", teacher_momentum=0.9), 10)
  st, _, _ = _state(model, sd, batch)
  assert set(st.objective_state["teacher"]) == {"img", "global_head", "patch_head"}
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(st.objective_state["teacher"]["img"]),
               nn.unbox(st.params["img"]))
  grads = jax.jit(jax.grad(lambda p: sd.loss(model, p, batch, jax.random.PRNGKey(0),
                                             objective_state=st.objective_state)[0]))(
                                                 st.params)
  norm = lambda t: float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(nn.unbox(t))))
  assert norm(grads["txt"]) == 0.0 and float(jnp.abs(nn.unbox(grads["t"])).sum()) == 0.0
  for name in ("img", "global_head", "patch_head"):
    assert norm(grads[name]) > 0.0, name
  # update_state: teacher <- m t + (1 - m) s at step 0 (m = 0.9), centres likewise (c = 0.9).
  new = _perturbed(st.params, 2)
  inputs = {"global": jnp.ones((24,)), "patches": -jnp.ones((24,))}
  out = sd.update_state(nn.unbox(st.objective_state), None, new, inputs, jnp.int32(0))
  want = jax.tree.map(lambda t, s: 0.9 * t + 0.1 * s, nn.unbox(st.objective_state["teacher"]),
                      {k: new[k] for k in ("img", "global_head", "patch_head")})
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               nn.unbox(out["teacher"]), want)
  np.testing.assert_allclose(out["center_global"], 0.1 * np.ones(24), rtol=1e-6)
  np.testing.assert_allclose(out["center_patches"], -0.1 * np.ones(24), rtol=1e-6)


@pytest.mark.slow  # Compiles a train step of a composite: about 40 s on 2 cores.
def test_siglip_with_a_late_self_distillation_term_trains():
  model, batch = models.build(MODEL), _batch(2)
  comp = objectives.build(dict(name="composite", terms=dict(
      sig=dict(name="siglip"), sd=dict(name="self_distill", start_step=2))), 10)
  st, tx, schedule = _state(model, comp, batch)
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=model, objective=comp, tx=tx,
                                                   schedule=schedule))
  teacher0 = nn.unbox(st.objective_state["terms"]["sd"]["teacher"])
  for i in range(4):
    st, m = step(st, batch)
    assert np.isfinite(float(m.metrics["train/loss"]))
    assert float(m.metrics["train/sd/weight"]) == (1.0 if i >= 2 else 0.0)
    if i >= 2:
      assert float(m.metrics["train/sd/local"]) > 0 and float(m.metrics["train/sd/masked"]) > 0
      want = float(m.metrics["train/sig/loss"]) + float(m.metrics["train/sd/loss"])
      assert float(m.metrics["train/loss"]) == pytest.approx(want, rel=1e-6)
  # The teacher followed the student while the term was off too.
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), teacher0,
                       nn.unbox(st.objective_state["terms"]["sd"]["teacher"]))
  assert max(jax.tree.leaves(moved)) > 0


def test_self_distill_errors_name_the_fix():
  with pytest.raises(ValueError, match="mask_ratio=1.0 must be in"):
    objectives.build(dict(name="self_distill", mask_ratio=1.0))
  with pytest.raises(ValueError, match="momentum_schedule='linear'; valid: constant, cosine"):
    objectives.build(dict(name="self_distill", momentum_schedule="linear"))
  with pytest.raises(ValueError, match="not both 0"):
    objectives.build(dict(name="self_distill", local_weight=0.0, masked_weight=0.0))
  sd = objectives.build(dict(name="self_distill"))
  with pytest.raises(ValueError, match="config.model.name='siglip2'"):
    sd.init_state({"img": {}, "txt": {}})


def test_multi_crop_keep_leaves_the_image_and_adds_local_crops():
  img = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
  op = transforms.multi_crop(16, 8, num_global=0, num_local=3, keep=True)
  out = op({"image": img.copy(), "key": "x"}, np.random.default_rng(1))
  np.testing.assert_array_equal(out["image"], img)
  assert out["crops_local"].shape == (3, 8, 8, 3) and "crops_global" not in out
  with pytest.raises(ValueError, match="keep=True"):
    transforms.multi_crop(16, 8, num_global=0)
