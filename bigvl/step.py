"""One train step: objective -> grads -> optax -> metrics. Pure; jitted by the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bigvl.state import TrainState


def train_step(state: TrainState, batch: dict, *, model, objective, tx, schedule):
  """Returns (new_state, metrics) with metrics scalars named `train/...`."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    return objective(model, params, batch, rng, train=True)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"train/loss": loss, "train/grad_norm": optax.global_norm(grads),
             "train/lr": schedule(state.step)}
  metrics.update({f"train/{k}": jnp.asarray(v, jnp.float32) for k, v in aux.items()})
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
