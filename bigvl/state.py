"""The train state and its sharded initialisation.

Shapes come from `jax.eval_shape`, logical partition specs from the params' annotations,
mesh shardings from the config's rules; then `jit(init, out_shardings=...)` creates every
array directly in its shard, so no device ever holds a full unsharded copy.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array             # int32 scalar: steps taken so far (skipped ones included).
  params: Any                 # Boxed (nn.LogicallyPartitioned) param tree: what gradients train.
  opt_state: Any
  objective_state: Any        # What the objective keeps that gradients do not train (DINO's
                              # EMA teacher and centre); {} for most. See objectives/protocol.py.
  rng: jax.Array              # Raw uint32 key; per-step keys are fold_in(rng, step).
  skipped_steps: jax.Array    # int32: steps whose update was dropped for a non-finite loss/grad.
  nonfinite_step: jax.Array   # int32: first such step, 0 if none.
  nonfinite_metric: jax.Array  # int32: what was non-finite at nonfinite_step (see NONFINITE).
  data_skipped: jax.Array     # int32: training examples replaced because they were unreadable.


NONFINITE = {1: "train/loss", 2: "train/grad_norm"}


# The field every train state of this layout has; a checkpoint without it was written by an
# older bigvl (before objective state had a slot of its own) and is refused on resume.
LAYOUT_FIELD = "objective_state"


def has_hook(objective, name: str) -> bool:
  """Whether `objective` defines the optional hook `name` (objectives/protocol.py)."""
  return callable(getattr(objective, name, None))


def model_inputs(objective, batch) -> tuple:
  """Positional model inputs for `model.init`: the objective's choice, else image(s) [, text],
  else text alone (a language model)."""
  if has_hook(objective, "init_inputs"):
    return tuple(objective.init_inputs(batch))
  for images in ("image", "images"):
    if images in batch and "text" in batch:
      return (batch[images], batch["text"])
    if images in batch:
      return (batch[images],)
  if "text" in batch:
    return (batch["text"],)
  raise ValueError("Cannot tell which batch fields the model takes; give the objective an "
                   "init_inputs(batch) method.")


def init_fn(model: nn.Module, objective, tx: optax.GradientTransformation, batch_spec: dict):
  """key -> TrainState; traced by `abstract` and jitted by `create`."""
  def init(key):
    params_key, dropout_key, train_key = jax.random.split(key, 3)
    dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), batch_spec)
    params = model.init({"params": params_key, "dropout": dropout_key},
                        *model_inputs(objective, dummy), train=False)["params"]
    objective_state = (objective.init_state(params) if has_hook(objective, "init_state")
                       else {})
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params),
                      objective_state=objective_state, rng=train_key,
                      skipped_steps=zero, nonfinite_step=zero, nonfinite_metric=zero,
                      data_skipped=zero)
  return init


def abstract(init, seed: int, mesh, rules):
  """(abstract state, shardings) without allocating or compiling: catches config errors early."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shapes = jax.eval_shape(init, jax.random.PRNGKey(seed))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(shapes), mesh, rules)
  return shapes, shardings


def create(model: nn.Module, objective, tx: optax.GradientTransformation, batch_spec: dict,
           seed: int, mesh, rules) -> tuple[TrainState, Any]:
  """Returns (state, state_shardings). `batch_spec`: ShapeDtypeStructs of one global batch."""
  init = init_fn(model, objective, tx, batch_spec)
  _, shardings = abstract(init, seed, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))
  return state, shardings


def abstract_like(state: TrainState, shardings) -> TrainState:
  """ShapeDtypeStructs carrying the target shardings (for checkpoint restore)."""
  def one(sharding, x):
    if isinstance(x, nn.meta.AxisMetadata):  # A logically partitioned box around one array.
      v = x.unbox()
      if not hasattr(v, "shape"):  # optax.MaskedNode: a frozen param has no optimizer state.
        return x
      return x.replace_boxed(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding))
    if not hasattr(x, "shape"):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  # `shardings` is a prefix of `state`: it has a sharding where `state` has a box.
  return jax.tree.map(one, shardings, state,
                      is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))


def param_count(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nn.unbox(params)))
