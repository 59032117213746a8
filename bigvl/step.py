"""One train step: objective -> grads -> optax -> metrics. Pure; jitted by the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bigvl.state import TrainState


def _value_and_grad(loss_fn, params, batch, accum_steps: int):
  """(loss, aux), grads of `loss_fn(params, batch)`, averaged over `accum_steps` micro-batches.

  Micro-batch i holds rows i, i+k, i+2k, ... so that each is spread over every data shard
  and needs no resharding. For a loss that is a mean over examples this is exactly the
  gradient of the whole batch; a contrastive loss sees only its micro-batch's negatives.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    return grad_fn(params, batch)
  micro = jax.tree.map(
      lambda x: x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1),
      batch)

  def body(carry, mb):
    (loss, aux), grads = grad_fn(params, mb)
    return jax.tree.map(jnp.add, carry, ((loss, aux), grads)), None

  first = jax.tree.map(lambda x: x[0], micro)
  rest = jax.tree.map(lambda x: x[1:], micro)
  total, _ = jax.lax.scan(body, grad_fn(params, first), rest)
  return jax.tree.map(lambda x: x / accum_steps, total)


def train_step(state: TrainState, batch: dict, *, model, objective, tx, schedule,
               grad_accum_steps: int = 1):
  """Returns (new_state, metrics) with metrics scalars named `train/...`.

  An objective may define `after_update(old_params, new_params, inputs, step) -> params`,
  applied after the optimizer (`inputs`: what its loss returned as aux["_update"]).

  A step whose loss or gradient is not finite changes neither params nor optimizer
  state; it is counted in `skipped_steps`, and the first one is recorded so that the
  loop can stop (config.nonfinite="stop") naming it.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  # Loader bookkeeping, not model input: counted here so the total is global and saved.
  batch = dict(batch)
  skipped = batch.pop("_skipped", None)
  data_skipped = state.data_skipped + (0 if skipped is None else skipped.sum(dtype=jnp.int32))

  def loss_fn(params, b):
    return objective(model, params, b, rng, train=True)

  (loss, aux), grads = _value_and_grad(loss_fn, state.params, batch, grad_accum_steps)
  aux = dict(aux)
  # Arrays the objective hands to its own after_update (DINO's batch centre); not metrics.
  update_inputs = aux.pop("_update", None)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if hasattr(objective, "after_update"):
    # Updates that are not gradient steps (an EMA teacher, a running centre), from the old
    # and the new params.
    params = objective.after_update(state.params, params, update_inputs, state.step)

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
                                 state.nonfinite_metric),
      data_skipped=data_skipped)
  metrics = {"train/loss": loss, "train/grad_norm": grad_norm,
             "train/lr": schedule(state.step),
             "train/skipped_steps": new_state.skipped_steps,
             "data/skipped": data_skipped,
             # Underscored: read by the loop, not logged.
             "_nonfinite_step": new_state.nonfinite_step,
             "_nonfinite_metric": new_state.nonfinite_metric}
  metrics.update({f"train/{k}": jnp.asarray(v, jnp.float32) for k, v in aux.items()})
  return new_state, metrics
