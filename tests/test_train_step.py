"""The train step learns: repeated steps on one fixed batch drive the loss down."""

import jax
import flax.linen as nn
import numpy as np
import pytest

from bigvl import models, objectives, optim, sharding as sh, state as state_lib, step as step_lib
from bigvl.data import digits, loader, tokenizer as tok_lib

pytestmark = pytest.mark.integration


@pytest.mark.slow  # Over 10 s on 2 cores: the default suite stays under 10 minutes.
def test_train_step_reduces_loss_on_fixed_batch(demo_config):
  config = demo_config(**{"optimizer.warmup_steps": 0})
  tok = tok_lib.train(digits.Digits("train").texts(), config.data.vocab_size)
  config.model.text.vocab_size = tok.vocab_size
  ds = loader.train_dataset(config.data.train, batch_size=32, seed=0,
                            context=dict(tokenizer=tok, text_len=config.data.text_len))
  batch = ds[0].inputs
  mesh = sh.make_mesh(dict(data=-1))
  rules = sh.get_rules("dp")
  model, objective = models.build(config.model), objectives.build(config.objective)
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps=1000)
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, _ = state_lib.create(model, objective, tx, spec, 0, mesh, rules)
    step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=model, objective=objective,
                                                     tx=tx, schedule=schedule))
    losses = []
    for _ in range(30):
      state, m = step(state, batch)
      losses.append(float(m.metrics["train/loss"]))
  assert int(state.step) == 30
  assert np.isfinite(losses).all()
  # SigLIP's loss starts near n * log(1 + e^-b)... and must fall well below where it began.
  assert losses[-1] < 0.5 * losses[0], losses


def test_optimizer_eps_reaches_adam():
  """config.optimizer.eps is Adam's epsilon: the first update of a gradient g is
  -lr * g / (|g| + eps) (bias-corrected moments), so a tiny g tells eps apart."""
  import jax.numpy as jnp
  import ml_collections
  from bigvl import defaults
  params, grad = {"w": jnp.zeros((1,))}, {"w": jnp.full((1,), 1e-7)}
  steps = {}
  for eps in (1e-8, 1e-6):
    cfg = ml_collections.ConfigDict(defaults.get_defaults().optimizer.to_dict())
    cfg.update(lr=1.0, eps=eps, weight_decay=0.0, grad_clip=0.0, schedule="constant")
    tx, _ = optim.make_optimizer(cfg, 10)
    update, _ = tx.update(grad, tx.init(params), params)
    steps[eps] = float(update["w"][0])
  np.testing.assert_allclose(steps[1e-8], -1e-7 / (1e-7 + 1e-8), rtol=1e-4)
  np.testing.assert_allclose(steps[1e-6], -1e-7 / (1e-7 + 1e-6), rtol=1e-4)
