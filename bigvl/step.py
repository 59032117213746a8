"""One train step: objective -> grads -> optax -> metrics. Pure; jitted by the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bigvl.state import TrainState


def train_step(state: TrainState, batch: dict, *, model, objective, tx, schedule):
  """Returns (new_state, metrics) with metrics scalars named `train/...`.

  A step whose loss or gradient is not finite changes neither params nor optimizer
  state; it is counted in `skipped_steps`, and the first one is recorded so that the
  loop can stop (config.nonfinite="stop") naming it.
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    return objective(model, params, batch, rng, train=True)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep_new = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  first_bad = (state.nonfinite_step == 0) & ~finite
  step = state.step + 1
  new_state = state.replace(
      step=step,
      params=keep_new(params, state.params),
      opt_state=keep_new(opt_state, state.opt_state),
      skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
      nonfinite_step=jnp.where(first_bad, step, state.nonfinite_step),
      nonfinite_metric=jnp.where(first_bad, jnp.where(jnp.isfinite(loss), 2, 1),
                                 state.nonfinite_metric))
  metrics = {"train/loss": loss, "train/grad_norm": grad_norm,
             "train/lr": schedule(state.step),
             "train/skipped_steps": new_state.skipped_steps,
             # Underscored: read by the loop, not logged.
             "_nonfinite_step": new_state.nonfinite_step,
             "_nonfinite_metric": new_state.nonfinite_metric}
  metrics.update({f"train/{k}": jnp.asarray(v, jnp.float32) for k, v in aux.items()})
  return new_state, metrics
