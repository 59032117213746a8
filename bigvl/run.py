"""The public run builder: everything a config asks for, built once, before anything runs.

    run = bigvl.run.build(config, workdir)
    with run.context():
      state, shardings = run.create_state()
      step, flops = run.compile_step(state, shardings)

`python -m bigvl.train`, `python -m bigvl.eval`, `tools/bench_train.py` and the colabs all
build through `build`, so a config that trains also evaluates and benchmarks. Every error
found while building (a bad option, a shape that does not fit, a missing file) is raised as
`config_lib.ConfigError` naming what to change, before anything is compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bigvl import config_lib, models, objectives, optim
from bigvl import evaluators as eval_lib
from bigvl import mfu as mfu_lib
from bigvl import sharding as sh
from bigvl import state as state_lib
from bigvl import step as step_lib
from bigvl.data import loader, run_tokenizer, transforms
from bigvl.data.tokenizer import Tokenizer

# Model options named here, left None in the config, get the id of that tokenizer piece.
TOKEN_ID_OPTIONS = {"image_token_id": "<image>", "chunk_token_id": "<|endofchunk|>"}


@dataclasses.dataclass(frozen=True)
class ScheduledEval:
  """An evaluator and how often the loop runs it (every `every` steps and at the last; 0:
  only at the last)."""
  evaluator: Any
  every: int


@dataclasses.dataclass(frozen=True)
class Run:
  """What a config builds into. Shapes: `batch_spec` holds one global batch's
  ShapeDtypeStructs (leading dim config.batch_size) as the host sends it (images uint8 when
  `input_transform` normalises them on the device); `input_spec()` is what the model and
  the objective see."""
  config: Any                       # The resolved ConfigDict (defaults, vocab size filled in).
  workdir: str
  mesh: jax.sharding.Mesh
  rules: tuple                      # Logical axis -> mesh axes (sharding.get_rules).
  model: nn.Module
  objective: Any                    # objectives.protocol.Objective
  optimizer: Any                    # optax.GradientTransformation
  schedule: Callable[[Any], Any]    # step -> learning rate
  tokenizer: Tokenizer | None
  pp_context: dict                  # What pp ops are built with: tokenizer, text_len.
  batch_spec: dict                  # {field: ShapeDtypeStruct (B, ...)} of the model inputs.
  source_names: tuple[str, ...]     # Training sources (mixture components), in loader order.
  evals: dict[str, ScheduledEval]
  # The pp's value_range/normalize tail that runs in the train step (config.data.
  # device_normalize; empty: none): uint8 fields of batch_spec -> float32 model inputs.
  input_transform: transforms.DeviceTransform = transforms.DeviceTransform()

  def input_spec(self) -> dict:
    """{field: ShapeDtypeStruct (B, ...)} of the model inputs: `batch_spec` after
    `input_transform` (float32 images where the batch carries uint8)."""
    return jax.eval_shape(self.input_transform, self.batch_spec)

  @contextlib.contextmanager
  def context(self):
    """The mesh and logical-axis rules every traced function of this run runs under."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def state_init(self) -> Callable[[jax.Array], state_lib.TrainState]:
    """key -> TrainState (unjitted)."""
    return state_lib.init_fn(self.model, self.objective, self.optimizer, self.input_spec())

  def abstract_state(self):
    """(abstract TrainState of ShapeDtypeStructs, its shardings): nothing is allocated."""
    return state_lib.abstract(self.state_init(), self.config.seed, self.mesh, self.rules)

  def create_state(self):
    """(TrainState at init, its shardings), each array created directly in its shards."""
    return state_lib.create(self.model, self.objective, self.optimizer, self.input_spec(),
                            self.config.seed, self.mesh, self.rules)

  def batch_shardings(self) -> dict:
    """{field: sharding} of a global batch: leading dim over the data-parallel mesh axes."""
    return {k: sh.batch_sharding(self.mesh, self.rules, len(v.shape))
            for k, v in self.batch_spec.items()}

  def data_info_spec(self) -> step_lib.DataInfo:
    rows = self.config.batch_size
    return step_lib.DataInfo(skipped=jax.ShapeDtypeStruct((rows,), jnp.bool_),
                             source=jax.ShapeDtypeStruct((rows,), jnp.int32))

  def compile_step(self, state, state_shardings):
    """(compiled train step, its FLOPs per device or None): `(state, batch, data_info) ->
    (state, StepResult)`, ahead of time so that XLA's cost analysis of the very program
    that runs gives the FLOPs; the state's buffers are donated. `state` may be abstract."""
    row = sh.batch_sharding(self.mesh, self.rules, 1)
    info_shardings = step_lib.DataInfo(skipped=row, source=row)
    fn = jax.jit(
        functools.partial(step_lib.train_step, model=self.model, objective=self.objective,
                          tx=self.optimizer, schedule=self.schedule,
                          grad_accum_steps=self.config.grad_accum_steps,
                          num_sources=len(self.source_names),
                          input_transform=self.input_transform or None),
        in_shardings=(state_shardings, self.batch_shardings(), info_shardings),
        out_shardings=(state_shardings, NamedSharding(self.mesh, P())),
        donate_argnums=(0,))
    shardings = self.batch_shardings()
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
             for k, v in self.batch_spec.items()}
    info = jax.tree.map(lambda s, shd: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shd),
                        self.data_info_spec(), info_shardings)
    with self.context():
      compiled = fn.lower(state, batch, info).compile()
    return compiled, mfu_lib.compiled_flops(compiled)

  def global_batch(self, local: loader.LoaderBatch) -> tuple[dict, step_lib.DataInfo]:
    """This process's LoaderBatch -> (model inputs, DataInfo) as global arrays."""
    inputs = sh.to_global_batch(local.inputs, self.mesh, self.rules)
    info = sh.to_global_batch({"skipped": local.skipped, "source": local.source},
                              self.mesh, self.rules)
    return inputs, step_lib.DataInfo(**info)

  def train_iterator(self, start_step: int, grain_state: dict | None = None):
    """This process's LoaderBatches of steps start_step+1, ... (`grain_state`: an iterator
    state saved in a checkpoint of the same process and worker count)."""
    c = self.config
    return loader.train_iterator(
        c.data.train, batch_size=c.batch_size, seed=c.seed, start_step=start_step,
        context=self.pp_context, workers=c.data.workers, prefetch=c.data.prefetch,
        process_index=jax.process_index(), process_count=jax.process_count(),
        on_corrupt=c.data.on_corrupt, state=grain_state, device_ops=c.data.device_normalize)

  def eval_params(self, state: state_lib.TrainState):
    """The params evaluators see: the objective's `eval_params` hook, else `state.params`."""
    if state_lib.has_hook(self.objective, "eval_params"):
      return self.objective.eval_params(state.params, state.objective_state)
    return state.params

  def evaluate(self, state: state_lib.TrainState, names=None) -> dict[str, float]:
    """{"eval/<name>/<metric>": value} of the evaluators `names` (default: all), sorted."""
    params = self.eval_params(state)
    out = {}
    with self.context():
      for name in sorted(self.evals if names is None else names):
        out.update({f"eval/{name}/{k}": v
                    for k, v in self.evals[name].evaluator.run(params).items()})
    return out


def check_config(config, mesh, rules) -> None:
  """Fails before compilation on settings that cannot work."""
  config_lib.check_values(config)  # lr > 0, batch_size >= 1, ...: before anything divides.
  dp = sh.data_parallel_size(mesh, rules)
  if config.batch_size % dp:
    raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size} is not divisible by the data-parallel size {dp} "
        f"(mesh {dict(mesh.shape)}); use a multiple of {dp}.")
  k = config.grad_accum_steps
  if k < 1 or config.batch_size % (k * dp):
    raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size} must split into config.grad_accum_steps={k} "
        f"micro-batches that each divide over the data-parallel size {dp}: use a multiple of "
        f"{k * dp}.")
  if config.total_steps <= 0:
    raise config_lib.ConfigError(f"config.total_steps must be > 0, got {config.total_steps}.")
  if not config.data.train:
    raise config_lib.ConfigError("config.data.train is empty: set its name, split and pp.")
  if config.nonfinite not in ("stop", "skip"):
    raise config_lib.ConfigError(f"config.nonfinite={config.nonfinite!r}; valid: stop, skip.")


def _fill_model_options(node, tokenizer) -> None:
  """Sets every `vocab_size: None` in the model config to the tokenizer's size, and every
  TOKEN_ID_OPTIONS key left None to that piece's id."""
  if isinstance(node, dict) or hasattr(node, "items"):
    for k, v in list(node.items()):
      if k == "vocab_size" and v is None:
        node[k] = tokenizer.vocab_size
      elif k in TOKEN_ID_OPTIONS and v is None:
        node[k] = tokenizer.piece_id(TOKEN_ID_OPTIONS[k])
      else:
        _fill_model_options(v, tokenizer)


def _eval_name(cfg) -> str:
  return str(cfg.get("name", ""))


def build(config, workdir: str | None) -> Run:
  """Builds the run of `config` (merged with the loop's defaults first) in `workdir` (where a
  tokenizer trained here is cached; None: not cached).

  Any error here is a config error: raised as ConfigError with the original message.
  """
  config = config_lib.with_defaults(config)
  try:
    mesh = sh.make_mesh(config.sharding.mesh)
    rules = sh.get_rules(config.sharding.rules)
    check_config(config, mesh, rules)
    tokenizer = run_tokenizer.resolve(
        config.data, workdir, is_main=jax.process_index() == 0,
        extra_needed=any(_eval_name(e) == "zeroshot" for e in config.evals.values()))
    if tokenizer is not None:
      with config.unlocked():
        _fill_model_options(config.model, tokenizer)
    model = models.build(config.model)
    objective = objectives.build(config.objective, config.total_steps)
    tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps,
                                        frozen=getattr(objective, "frozen_params", ""))
    context = dict(tokenizer=tokenizer, text_len=config.data.text_len)
    # One example per process gives the batch's fields and shapes: a paper batch (32k
    # images) would take minutes to preprocess here, and the loop reads its own.
    train_ds, input_transform = loader.train_pipeline(
        config.data.train, batch_size=jax.process_count(), seed=config.seed, context=context,
        process_index=jax.process_index(), process_count=jax.process_count(),
        on_corrupt=config.data.on_corrupt, device_ops=config.data.device_normalize)
    local = train_ds[0].inputs
    batch_spec = {k: jax.ShapeDtypeStruct((config.batch_size,) + v.shape[1:], v.dtype)
                  for k, v in local.items()}
    init = state_lib.init_fn(model, objective, tx, jax.eval_shape(input_transform, batch_spec))
    state_lib.abstract(init, config.seed, mesh, rules)  # Traces the model: shape errors now.
    ctx = eval_lib.EvalContext(model=model, tokenizer=tokenizer, text_len=config.data.text_len,
                               mesh=mesh, rules=rules, process_index=jax.process_index(),
                               process_count=jax.process_count(), objective=objective)
    evals = {name: ScheduledEval(eval_lib.build(name, cfg, ctx),
                                 int(cfg.get("every", config.eval_every)))
             for name, cfg in config.evals.items()}
    source_names = tuple(label for label, _ in loader.source_configs(config.data.train))
  except config_lib.ConfigError:
    raise
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise config_lib.ConfigError(f"{type(e).__name__}: {e}") from e
  return Run(config=config, workdir=workdir, mesh=mesh, rules=rules, model=model,
             objective=objective, optimizer=tx, schedule=schedule, tokenizer=tokenizer,
             pp_context=context, batch_spec=batch_spec, source_names=source_names,
             evals=evals, input_transform=input_transform)


def empty_data_info(run: Run) -> step_lib.DataInfo:
  """A DataInfo of no skipped rows, all from source 0, placed like a batch (benchmarks)."""
  row = sh.batch_sharding(run.mesh, run.rules, 1)
  n = run.config.batch_size
  return step_lib.DataInfo(skipped=jax.device_put(np.zeros((n,), bool), row),
                           source=jax.device_put(np.zeros((n,), np.int32), row))
