"""A weighted sum of registered objectives on one model: SigLIP 2, SLIP, FLAVA-style recipes.

    c.objective = dict(name="composite", terms=dict(
        sig=dict(name="siglip"),
        cap=dict(name="captioning", weight=0.5, method="caption"),
        distill=dict(name="dino", weight=1.0, start_fraction=0.8),
    ))

Each term is an objective config (`name` and its own options, as `config.objective` would
be) plus the composite's keys for it:

- `weight` (default 1): the term's weight once it is on.
- `start_step` / `start_fraction` (default 0): the step at which the term switches on
  (a fraction of the run's `total_steps` for the latter; SigLIP 2 adds its
  self-distillation and masked-prediction terms at 0.8). Before it the term's weight is 0
  and the term is not computed (a `lax.cond`, so an off term costs no FLOPs).
- `ramp_steps` (default 0): the weight rises linearly from 0 to `weight` over that many
  steps after the start, instead of jumping.
- `end_step` / `end_fraction` (default: never): the step at which the term switches off.
- `method`: the model method the term runs as if it were `__call__` (a two-tower model
  with a decoder: `method="caption"` for the captioning term). Default: `__call__`.

The loss is sum_i w_i(step) * loss_i. Logged, per term: `train/<term>/loss`,
`train/<term>/weight` and each of the term's own metrics as `train/<term>/<metric>`.

State: the composite's objective state is `{"step": int32, "terms": {term: its state}}`
for the terms that define `init_state` (an EMA teacher lives there). `step` is the next
step to run, set by `update_state` after every step (the loss sees the state, not the
step, which is how the schedules know where the run is); after a step the loop skips as
non-finite it lags by one until the next finite step. Every term's `update_state` runs
every step, on or off, so an EMA teacher follows the student from step 0 and is ready
when its term switches on; an off term hands it zeros as `update_inputs`.

Random numbers: the first term gets the step's rng itself (so a one-term composite is that
objective exactly), term i > 0 gets `jax.random.fold_in(rng, i)`. Terms run in the config's
order. `frozen_params` is the union of the terms'; `init_inputs` and `eval_params` come from
the first term that defines them, or from the term named by `init_term` / `eval_term`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from bigvl.objectives.protocol import Aux
from bigvl.registry import OBJECTIVES, config_dict
from bigvl.state import has_hook, model_inputs

# The composite's own keys in a term's config; every other key goes to the term's objective.
TERM_KEYS = ("weight", "start_step", "start_fraction", "end_step", "end_fraction",
             "ramp_steps", "method")


class MethodView:
  """`model` whose `apply` runs `method` unless the caller names another: hands a term a
  model whose `__call__` is the method the term expects (e.g. a decoder of a two-tower)."""

  def __init__(self, model, method: str):
    self._model, self._method = model, method

  def apply(self, variables, *args, **kwargs):
    kwargs.setdefault("method", self._method)
    return self._model.apply(variables, *args, **kwargs)

  def __getattr__(self, name):   # Everything else (init, fields) is the model's.
    return getattr(self._model, name)


@dataclasses.dataclass(frozen=True)
class Term:
  """One built term: its objective and its schedule (steps resolved)."""
  name: str
  objective: Any
  weight: float
  start: int
  end: int | None
  ramp: int
  method: str | None

  def weight_at(self, step):
    """The weight at `step` (int32 scalar): 0 before `start` and from `end`, `weight`
    between (a linear rise over `ramp` steps after `start`)."""
    step = jnp.asarray(step, jnp.float32)
    on = step >= self.start
    if self.end is not None:
      on = on & (step < self.end)
    w = jnp.asarray(self.weight, jnp.float32)
    if self.ramp > 0:
      w = w * jnp.clip((step - self.start + 1) / self.ramp, 0.0, 1.0)
    return jnp.where(on, w, 0.0)

  def model_for(self, model):
    return model if self.method is None else MethodView(model, self.method)


def _step_of(total_steps: int, opts: dict, key: str, where: str, default):
  step, frac = opts.pop(f"{key}_step", None), opts.pop(f"{key}_fraction", None)
  if step is not None and frac is not None:
    raise ValueError(f"{where}: give {key}_step or {key}_fraction, not both.")
  if frac is not None:
    if not 0.0 <= float(frac) <= 1.0:
      raise ValueError(f"{where}.{key}_fraction={frac} must be in [0, 1].")
    if total_steps <= 0:
      raise ValueError(f"{where}.{key}_fraction needs the run's total_steps; set "
                       "config.total_steps (or config.objective.total_steps).")
    return int(round(float(frac) * total_steps))
  if step is not None and int(step) < 0:
    raise ValueError(f"{where}.{key}_step={step} must be >= 0.")
  return default if step is None else int(step)


def build_terms(terms_cfg, total_steps: int) -> tuple[Term, ...]:
  """The composite's `terms` config -> built Terms, in the config's order; one-line
  ValueErrors naming `config.objective.terms.<term>` for bad options."""
  from bigvl import objectives   # The package imports this module.
  terms_cfg = config_dict(terms_cfg, "config.objective.terms")
  if not terms_cfg:
    raise ValueError("config.objective.terms is empty: name at least one objective, e.g. "
                     "terms=dict(sig=dict(name='siglip')).")
  out = []
  for tname, tcfg in terms_cfg.items():
    where = f"config.objective.terms.{tname}"
    if "/" in tname:
      raise ValueError(f"{where}: a term's name may not contain '/' (it names its metrics).")
    opts = config_dict(tcfg, where)
    if opts.get("name") in ("composite", None):
      raise ValueError(f"{where} needs name=<a registered objective> (not 'composite'); "
                       f"valid: {', '.join(n for n in OBJECTIVES.names() if n != 'composite')}.")
    weight = float(opts.pop("weight", 1.0))
    if weight < 0:
      raise ValueError(f"{where}.weight={weight} must be >= 0.")
    start = _step_of(total_steps, opts, "start", where, 0)
    end = _step_of(total_steps, opts, "end", where, None)
    if end is not None and end <= start:
      raise ValueError(f"{where}: the term ends (step {end}) before it starts (step {start}).")
    ramp = int(opts.pop("ramp_steps", 0))
    if ramp < 0:
      raise ValueError(f"{where}.ramp_steps={ramp} must be >= 0.")
    method = opts.pop("method", None)
    objective = objectives.build(opts, total_steps or None)
    out.append(Term(tname, objective, weight, start, end, ramp, method))
  return tuple(out)


@OBJECTIVES.register("composite")
@dataclasses.dataclass(frozen=True)
class Composite:
  """sum_i w_i(step) * loss_i over `terms` (see the module docstring for the keys)."""
  terms: Any = None
  total_steps: int = 0     # The run's (filled in by objectives.build): fractions and DINO.
  init_term: str | None = None
  eval_term: str | None = None

  def __post_init__(self):
    built = build_terms(self.terms or {}, self.total_steps)
    object.__setattr__(self, "built", built)
    names = [t.name for t in built]
    for key in ("init_term", "eval_term"):
      if getattr(self, key) is not None and getattr(self, key) not in names:
        raise ValueError(f"config.objective.{key}={getattr(self, key)!r} is not a term; "
                         f"terms: {', '.join(names)}.")
    frozen = [getattr(t.objective, "frozen_params", "") for t in built]
    object.__setattr__(self, "frozen_params", "|".join(f"(?:{p})" for p in frozen if p))

  def _term(self, hook: str, named: str | None):
    if named is not None:
      term = next(t for t in self.built if t.name == named)
      return term if has_hook(term.objective, hook) else None
    return next((t for t in self.built if has_hook(t.objective, hook)), None)

  def init_inputs(self, batch):
    term = self._term("init_inputs", self.init_term)
    if term is None:
      return model_inputs(None, batch)
    return term.objective.init_inputs(batch)

  def init_state(self, params):
    """{"step": 0, "terms": {term: its init_state(params)}} for the terms with state."""
    return {"step": jnp.zeros((), jnp.int32),
            "terms": {t.name: t.objective.init_state(params) for t in self.built
                      if has_hook(t.objective, "init_state")}}

  def eval_params(self, params, objective_state):
    term = self._term("eval_params", self.eval_term)
    if term is None:
      return params
    return term.objective.eval_params(params, objective_state["terms"].get(term.name))

  def loss(self, model, params, batch, rng, *, train: bool = True, objective_state=None):
    step = objective_state["step"] if objective_state is not None else jnp.zeros((), jnp.int32)
    total = jnp.zeros((), jnp.float32)
    metrics, update_inputs = {}, {}
    for i, term in enumerate(self.built):
      kwargs = {}
      if has_hook(term.objective, "init_state"):
        kwargs["objective_state"] = objective_state["terms"][term.name]
      term_rng = rng if i == 0 else jax.random.fold_in(rng, i)
      run = _runner(term, model, batch, term_rng, train, kwargs)
      weight = term.weight_at(step)
      if term.start == 0 and term.end is None:
        loss, aux = run(params)   # Always on: no cond.
      else:
        # Off: not computed. Both branches give the same structure; the off one zeros.
        shapes = jax.eval_shape(run, params)
        zeros = lambda p: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        loss, aux = jax.lax.cond(weight > 0, run, zeros, params)
      total = total + weight * loss
      metrics[f"{term.name}/loss"] = loss
      metrics[f"{term.name}/weight"] = weight
      metrics.update({f"{term.name}/{k}": v for k, v in aux.metrics.items()})
      if aux.update_inputs is not None:
        update_inputs[term.name] = aux.update_inputs
    return total, Aux(metrics=metrics, update_inputs=update_inputs)

  def update_state(self, objective_state, old_params, new_params, update_inputs, step):
    terms = dict(objective_state["terms"])
    for term in self.built:
      if has_hook(term.objective, "update_state") and term.name in terms:
        terms[term.name] = term.objective.update_state(
            terms[term.name], old_params, new_params, (update_inputs or {}).get(term.name),
            step)
    return {"step": jnp.asarray(step + 1, jnp.int32), "terms": terms}


def _runner(term: Term, model, batch, rng, train: bool, kwargs: dict):
  """params -> (loss float32, Aux) of one term."""
  tmodel = term.model_for(model)

  def run(params):
    loss, aux = term.objective.loss(tmodel, params, batch, rng, train=train, **kwargs)
    aux = aux if isinstance(aux, Aux) else Aux(metrics=dict(aux))
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.metrics.items()}
    return jnp.asarray(loss, jnp.float32), Aux(metrics=metrics, update_inputs=aux.update_inputs)
  return run
