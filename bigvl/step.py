"""One train step: objective -> grads -> optax -> objective state -> metrics. Pure; jitted by
the loop."""

from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from bigvl.objectives.protocol import Aux
from bigvl.state import TrainState, has_hook


@flax.struct.dataclass
class DataInfo:
  """The loader's bookkeeping of a batch's rows, as global arrays (B,).

  skipped: bool, True where an unreadable or unusable example (an undecodable image, no
    usable caption) was replaced by a usable one.
  source: int32, the index of the data source (mixture component) each row came from.
  """
  skipped: jax.Array
  source: jax.Array


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


@flax.struct.dataclass
class StepResult:
  """What one train step tells the loop, beside the new state.

  metrics: {"train/...", "data/...": scalar}, all logged.
  nonfinite_step: int32 scalar, the first step whose loss or gradient was NaN/Inf (0: none);
    the loop stops on it under config.nonfinite="stop".
  nonfinite_metric: int32 scalar, what was non-finite then (a key of state.NONFINITE).
  source_counts: int32 (num_sources,), examples of this batch drawn from each data source
    (mixture component, in the loader's order).
  """
  metrics: dict
  nonfinite_step: jax.Array
  nonfinite_metric: jax.Array
  source_counts: jax.Array


def _loss_fn(objective, model, rng, objective_state):
  """params, batch -> (loss, Aux) of the objective, the Aux always typed."""
  kwargs = {"objective_state": objective_state} if has_hook(objective, "init_state") else {}

  def loss_fn(params, batch):
    loss, aux = objective.loss(model, params, batch, rng, train=True, **kwargs)
    return loss, (aux if isinstance(aux, Aux) else Aux(metrics=dict(aux)))
  return loss_fn


def train_step(state: TrainState, batch: dict, data_info: DataInfo | None = None, *, model, objective, tx,
               schedule, grad_accum_steps: int = 1, num_sources: int = 1,
               input_transform: Callable[[dict], dict] | None = None):
  """Returns (new_state, StepResult).

  batch: the model inputs, global arrays with leading dimension config.batch_size, as the
    host sent them (images uint8 when the pp's value_range/normalize runs here).
  input_transform: batch -> batch, the end of the pp that runs on the device
    (`transforms.DeviceTransform`: uint8 (B, ..., C) -> float32), before anything else sees
    the batch. None: the batch is the model input as it is.
  data_info: the loader's bookkeeping of the same rows (unreadable examples replaced,
    source of each row); never seen by the objective. None: no row skipped, all from
    source 0 (tests, benchmarks).

  After the optimizer, an objective with objective state gets
  `update_state(objective_state, old_params, new_params, aux.update_inputs, step)`.
  A step whose loss or gradient is not finite changes neither params, optimizer state nor
  objective state; it is counted in `skipped_steps`, and the first one is recorded so that
  the loop can stop (config.nonfinite="stop") naming it.
  """
  if input_transform is not None:
    # Before the micro-batch split, so that the objective sees what the host path gives.
    batch = input_transform(batch)
  rng = jax.random.fold_in(state.rng, state.step)
  if data_info is None:
    rows = jax.tree.leaves(batch)[0].shape[0]
    data_info = DataInfo(skipped=jnp.zeros((rows,), bool), source=jnp.zeros((rows,), jnp.int32))
  # Loader bookkeeping, not model input: counted here so the total is global and saved.
  data_skipped = state.data_skipped + data_info.skipped.sum(dtype=jnp.int32)
  source_counts = jnp.zeros((num_sources,), jnp.int32).at[data_info.source].add(1)

  loss_fn = _loss_fn(objective, model, rng, state.objective_state)
  (loss, aux), grads = _value_and_grad(loss_fn, state.params, batch, grad_accum_steps)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  objective_state = state.objective_state
  if has_hook(objective, "update_state"):
    # Updates that are not gradient steps (an EMA teacher, a running centre).
    objective_state = objective.update_state(state.objective_state, state.params, params,
                                             aux.update_inputs, state.step)

  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep_new = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  first_bad = (state.nonfinite_step == 0) & ~finite
  step = state.step + 1
  new_state = state.replace(
      step=step,
      params=keep_new(params, state.params),
      opt_state=keep_new(opt_state, state.opt_state),
      objective_state=keep_new(objective_state, state.objective_state),
      skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
      nonfinite_step=jnp.where(first_bad, step, state.nonfinite_step),
      nonfinite_metric=jnp.where(first_bad, jnp.where(jnp.isfinite(loss), 2, 1),
                                 state.nonfinite_metric),
      data_skipped=data_skipped)
  metrics = {"train/loss": loss, "train/grad_norm": grad_norm,
             "train/lr": schedule(state.step),
             "train/skipped_steps": new_state.skipped_steps,
             "data/skipped": data_skipped}
  metrics.update({f"train/{k}": jnp.asarray(v, jnp.float32) for k, v in aux.metrics.items()})
  return new_state, StepResult(metrics=metrics, nonfinite_step=new_state.nonfinite_step,
                               nonfinite_metric=new_state.nonfinite_metric,
                               source_counts=source_counts)
