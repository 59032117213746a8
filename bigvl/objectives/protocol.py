"""What the train loop asks of an objective: one method, `loss`, and optional hooks.

An objective is any object with a `loss` method of the signature below; usually a frozen
dataclass whose fields are the config's options (`config.objective`, without `name`). The
loop never looks at anything else. Every hook below is optional: an objective that does
not define one gets the behaviour its docstring calls "otherwise".

Shapes: `B` is the global batch (`config.batch_size`, or `batch_size / grad_accum_steps`
inside an accumulated step); a batch is the dict of arrays that the data config's `pp`
ends with (`keep(...)`), each with leading dimension `B`. `params` is the model's param
tree (boxed in `nn.LogicallyPartitioned`; `model.apply({"params": params}, ...)` takes it
as it is). All hooks run inside `jax.jit`: they are pure functions of their arguments.

A minimal objective (a fork in its own file, named in the config as
`config.objective.name = "my_module:PairCosine"`):

    @dataclasses.dataclass(frozen=True)
    class PairCosine:
      spread: float = 0.1

      def loss(self, model, params, batch, rng, *, train=True):
        zimg, ztxt, _ = model.apply({"params": params}, batch["image"], batch["text"],
                                    train=train, rngs={"dropout": rng})
        pos = jnp.sum(zimg * ztxt, axis=-1).mean()
        return -pos + self.spread * jnp.mean(zimg @ ztxt.T), {"cos_pos": pos}
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import flax
import jax


@flax.struct.dataclass
class Aux:
  """What `loss` may return beside the loss when it has more than metrics.

  metrics: {name: scalar}, logged as `train/<name>`.
  update_inputs: any pytree of arrays computed in the loss (e.g. DINO's batch mean of the
    teacher outputs) that the objective's `update_state` receives after the optimizer
    step; averaged over micro-batches like the loss. Not logged.
  """
  metrics: dict
  update_inputs: Any = None


@runtime_checkable
class Objective(Protocol):
  """The one required method. See the module docstring for shapes and an example."""

  def loss(self, model, params, batch: dict, rng: jax.Array, *, train: bool = True,
           **kwargs) -> tuple[jax.Array, dict | Aux]:
    """(scalar loss, metrics) of one (micro-)batch; the loop differentiates it in `params`.

    Called by the train step once per micro-batch, with `train=True`, a fresh per-step
    `rng` (use it for dropout and masking: `rngs={"dropout": rng}`), and, for an
    objective that defines `init_state`, `objective_state=` its current state (never
    given otherwise). Evaluators that reuse the objective (reconstruction) call it with
    `train=False`.

    Returns `(loss, metrics)` with `loss` a float32 scalar and `metrics` a dict of scalars
    (logged under `train/`), or `(loss, Aux(metrics, update_inputs))` to hand arrays to
    `update_state`.
    """
    ...


class ObjectiveHooks(Protocol):
  """The optional hooks, each called by the loop only when the objective defines it."""

  # Regex over "/"-joined param paths the optimizer never updates (no moments are kept
  # for them), joined with config.optimizer.frozen_pattern. Read once, when the optimizer
  # is built. Otherwise: nothing is frozen beyond the config's pattern. Flamingo freezes
  # its LM and vision tower with it.
  frozen_params: ClassVar[str]

  # The number of steps of the run, filled in by `objectives.build` when the config does
  # not set it, for objectives with a schedule of their own (DINO's teacher momentum).
  total_steps: int

  def init_inputs(self, batch: dict) -> tuple:
    """Positional arguments of `model.init` from a batch of zeros of the train batch's
    shapes (B rows). Called once, when the state is created (and traced for shapes).
    Otherwise: `(image, text)`, `(image,)` or `(text,)` from the fields the batch has
    (`image` or `images`; `text`)."""
    ...

  def init_state(self, params) -> Any:
    """The objective's own state from the freshly initialised params: a pytree of arrays
    that gradients do not train (DINO: the EMA teacher's params and the output centre).
    Called once inside the sharded init; the state lives in `TrainState.objective_state`,
    is sharded by the logical axes its boxed leaves carry (a copy of boxed params keeps
    theirs), is checkpointed with the rest of the train state, and is never seen by the
    optimizer or by the weight-decay / freeze regexes. Otherwise: the state is `{}` and
    `loss` is called without `objective_state`."""
    ...

  def update_state(self, objective_state, old_params, new_params, update_inputs,
                   step: jax.Array) -> Any:
    """The next objective state, after the optimizer has turned `old_params` into
    `new_params` (`step`: int32 scalar, steps taken before this one; `update_inputs`:
    what `loss` returned in `Aux.update_inputs`, averaged over micro-batches). A step
    whose loss or gradient is not finite keeps the old state. Otherwise: the state does
    not change."""
    ...

  def eval_params(self, params, objective_state) -> Any:
    """The params evaluators see (zero-shot, probes, ...): DINO evaluates its teacher.
    Called at each evaluation, outside the train step. Otherwise: `params`."""
    ...
