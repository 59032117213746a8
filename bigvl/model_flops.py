"""Model FLOPs of a train step, from the config: what MFU divides by, never what XLA ran.

    flops = model_flops.of_run(run)          # run = bigvl.run.build(config, workdir)
    flops.per_step, flops.per_example        # forward + backward of one global batch

The count is the work a step *must* do to train the model, independent of how it is run:

- the config is first rewritten to its plainest form (`reference_config`): every model
  `remat` option "none" (recomputation is not model work), every `*_impl` option (attention,
  losses) "xla" (a Pallas kernel is a custom call XLA counts as 0 FLOPs; its XLA reference
  does the same math), `grad_accum_steps` 1 (k micro-batches do the work of one batch);
- its model and objective are built from that (`models.build`, `objectives.build`: cheap,
  nothing is compiled), and `jax.value_and_grad(objective.loss)` over the trainable params
  is traced (`jax.make_jaxpr`) on the run's abstract batch (`run.batch_spec`, global shapes)
  and abstract params: nothing is allocated or run;
- every matmul and convolution of that jaxpr is counted (`jaxpr_flops`): 2*M*N*K per
  `dot_general`, 2 x output elements x the kernel's window x its input features per
  `conv_general_dilated` (less the zeros an input dilation inserts: `conv_flops`); sub-jaxprs are recursed into (pjit, custom_vjp/custom_jvp,
  remat bodies once, scan bodies x their length, cond: the costliest branch, shard_map
  bodies x the devices they run on). Elementwise ops, reductions, softmax and norms are
  not counted, as in the usual 6*N*D accounting: they are O(activations), not O(params x
  tokens).

Frozen params (config.optimizer.frozen_pattern and the objective's `frozen_params`, e.g.
Flamingo's LM and vision tower, a LiT image tower) are not differentiated, so their weight
gradients are not counted, nor is any backward pass through a tower only they feed. What the
objective keeps outside params (DINO's EMA teacher) runs forward only, as in the step.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import ml_collections

from bigvl import models, objectives, optim
from bigvl import state as state_lib

# Model options rewritten by `reference_config`, wherever they appear in config.model / .objective.
REFERENCE_OPTIONS = {"remat": "none"}
IMPL_SUFFIX = "_impl"   # attention_impl, loss_impl, ...: all take "xla" (the XLA reference).


@dataclasses.dataclass(frozen=True)
class ModelFlops:
  """Model FLOPs of one optimizer step of the whole (global) batch, forward + backward.

  per_step: FLOPs of one step over all devices (config.batch_size examples).
  per_example: per_step / config.batch_size.
  forward: FLOPs of the loss alone (no gradient), same batch.
  """
  per_step: float
  per_example: float
  forward: float


# ------------------------------------------------------------------------------------------
# Counting a jaxpr.


def dot_general_flops(lhs_shape, rhs_shape, dimension_numbers) -> float:
  """2 x batch x M x N x K of `lax.dot_general` (one multiply and one add per term).

  lhs_shape, rhs_shape: the operands' shapes; dimension_numbers: ((lhs_contract,
  rhs_contract), (lhs_batch, rhs_batch)) as in the primitive's params.
  """
  (lhs_contract, _), (lhs_batch, _) = dimension_numbers
  contract = math.prod(lhs_shape[d] for d in lhs_contract)
  batch = math.prod(lhs_shape[d] for d in lhs_batch)
  lhs_free = math.prod(lhs_shape) // max(contract * batch, 1)
  rhs_free = math.prod(rhs_shape) // max(contract * batch, 1)
  return 2.0 * batch * lhs_free * rhs_free * contract


def conv_flops(rhs_shape, out_shape, dimension_numbers, lhs_dilation=()) -> float:
  """2 x output elements x (kernel window x kernel input features) / input dilation of
  `conv_general_dilated`.

  rhs_shape: the kernel's shape; out_shape: the output's; dimension_numbers: the
  primitive's ConvDimensionNumbers (lhs_spec, rhs_spec, out_spec); lhs_dilation: its input
  dilation per spatial dim. Each output element sums over the kernel's window and its
  input-feature dim, which is already C_in / feature_group_count; with batch_group_count (a
  weight gradient) the output batch is already N / groups. An input-dilated conv is the
  input gradient of a strided one (a transposed conv): only 1 / prod(lhs_dilation) of its
  window meets a real input, the rest are the zeros the dilation inserts, so it costs what
  the strided forward costs. Together: a strided conv's forward and both gradients count 3x.
  """
  rhs_spec = dimension_numbers.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
  window = math.prod(rhs_shape[d] for d in rhs_spec[2:])
  dilation = math.prod(lhs_dilation or (1,))
  return 2.0 * math.prod(out_shape) * window * rhs_shape[rhs_spec[1]] / dilation


def _shard_map_devices(params) -> int:
  """Devices a shard_map body runs on: the product of its manual mesh axes."""
  mesh = params.get("mesh")
  axes = params.get("manual_axes", params.get("axis_names", ()))
  if mesh is None:
    return 1
  shape = dict(mesh.shape)
  names = axes if axes else tuple(shape)
  return math.prod(shape[a] for a in names)


def jaxpr_flops(jaxpr) -> float:
  """Matmul + convolution FLOPs of one evaluation of `jaxpr` (a Jaxpr or ClosedJaxpr).

  Sub-jaxprs: scan bodies count x `length`, cond the costliest branch, shard_map bodies x
  the devices they run on (their shapes are per device), pjit / closed_call / custom_vjp /
  custom_jvp / remat bodies once. A while loop's trip count is not known when tracing: one
  whose body has matmuls is refused (ValueError) rather than under-counted; a train step's
  loops are scans (fori_loop with static bounds becomes one).
  """
  if isinstance(jaxpr, jex.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
      total += dot_general_flops(lhs, rhs, eqn.params["dimension_numbers"])
    elif name == "conv_general_dilated":
      total += conv_flops(eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape,
                          eqn.params["dimension_numbers"], eqn.params.get("lhs_dilation"))
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(jaxpr_flops(b) for b in eqn.params["branches"])
    elif name == "while":
      body = jaxpr_flops(eqn.params["body_jaxpr"])
      if body:
        raise ValueError(
            "The loss has a while loop with matmuls in its body; its trip count is unknown "
            "when tracing, so its model FLOPs cannot be counted. Use lax.scan (or fori_loop "
            "with static bounds).")
      total += jaxpr_flops(eqn.params["cond_jaxpr"])
    elif name == "shard_map":
      total += _shard_map_devices(eqn.params) * jaxpr_flops(eqn.params["jaxpr"])
    elif name == "pallas_call":
      # Only reached if a kernel has no XLA switch: its body runs once per grid point.
      grid = getattr(eqn.params.get("grid_mapping"), "grid", ())
      total += math.prod(grid) * jaxpr_flops(eqn.params["jaxpr"])
    else:
      # pjit, closed_call, remat, custom_jvp_call, custom_vjp_call, ...: their bodies once.
      # (A custom rule's other jaxprs, e.g. a jvp thunk, are callables, not jaxprs.)
      for sub in jex.jaxprs_in_params(eqn.params):
        total += jaxpr_flops(sub)
  return total


# ------------------------------------------------------------------------------------------
# From a config.


def reference_config(config) -> ml_collections.ConfigDict:
  """A copy of `config` computing the same model the plainest way: every `remat` under
  config.model "none", every `*_impl` under config.model / config.objective "xla",
  grad_accum_steps 1. Nothing else changes (sizes, dtypes, masking ratios, frozen params)."""
  out = ml_collections.ConfigDict(config.to_dict())

  def rewrite(node):
    for k in list(node.keys()):
      v = node[k]
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        rewrite(v)
      elif k in REFERENCE_OPTIONS:
        node[k] = REFERENCE_OPTIONS[k]
      elif k.endswith(IMPL_SUFFIX) and isinstance(v, str):
        node[k] = "xla"

  for section in ("model", "objective"):
    if section in out:
      rewrite(out[section])
  if "grad_accum_steps" in out:
    out.grad_accum_steps = 1
  return out


def frozen_regex(config, objective) -> re.Pattern | None:
  """The params the optimizer never updates, as `optim.make_optimizer` joins them."""
  parts = [p for p in (config.optimizer.get("frozen_pattern", "") if "optimizer" in config
                       else "", getattr(objective, "frozen_params", "")) if p]
  return re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None


def loss_jaxprs(config, batch_spec: dict, reference: bool = True):
  """(jaxpr of loss + gradients, jaxpr of the loss alone) of `config`'s reference form.

  config: a resolved run config (`run.config`: defaults merged, vocab sizes filled in).
  batch_spec: {field: ShapeDtypeStruct (B, ...)} of one global batch (`run.batch_spec`).
  reference: False traces `config` as it is (remat, kernels as set), e.g. to see what
    recomputation adds; model FLOPs always use True.
  The gradient is taken in the trainable params only (frozen ones are passed beside them).
  """
  ref = reference_config(config) if reference else config
  model = models.build(ref.model)
  objective = objectives.build(ref.objective, ref.get("total_steps"))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch_spec.items()}
  rng = jax.random.PRNGKey(0)

  def init(key):
    dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), batch)
    params = model.init({"params": key, "dropout": key},
                        *state_lib.model_inputs(objective, dummy), train=False)["params"]
    ostate = objective.init_state(params) if state_lib.has_hook(objective, "init_state") else None
    return params, ostate

  params, ostate = jax.eval_shape(init, rng)
  frozen = frozen_regex(ref, objective)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  train_mask = [not (frozen and frozen.fullmatch(optim.path_str(p))) for p, _ in flat]
  leaves = [x for _, x in flat]

  def merge(trainable, fixed):
    it_t, it_f = iter(trainable), iter(fixed)
    return jax.tree.unflatten(treedef, [next(it_t) if m else next(it_f) for m in train_mask])

  def loss(trainable, fixed, ostate, batch):
    kwargs = {} if ostate is None else {"objective_state": ostate}
    value, _ = objective.loss(model, merge(trainable, fixed), batch, rng, train=True, **kwargs)
    return value

  trainable = [x for x, m in zip(leaves, train_mask) if m]
  fixed = [x for x, m in zip(leaves, train_mask) if not m]
  args = (trainable, fixed, ostate, batch)
  return jax.make_jaxpr(jax.value_and_grad(loss))(*args), jax.make_jaxpr(loss)(*args)


def of_config(config, batch_spec: dict) -> ModelFlops:
  """Model FLOPs of one train step of `config` on a global batch of `batch_spec`.

  config: a resolved run config (`run.config`); batch_spec: {field: ShapeDtypeStruct
  (B, ...)}, B = config.batch_size. Traced only: takes seconds even for a large model.
  """
  grad, forward = loss_jaxprs(config, batch_spec)
  per_step = jaxpr_flops(grad)
  batch_size = next(iter(batch_spec.values())).shape[0]
  return ModelFlops(per_step=per_step, per_example=per_step / batch_size,
                    forward=jaxpr_flops(forward))


def of_run(run) -> ModelFlops:
  """Model FLOPs of one train step of a built run (`bigvl.run.build`), on the batch the
  model sees (`run.input_spec()` where the run normalises uint8 images on the device, else
  `run.batch_spec`)."""
  spec = run.input_spec() if callable(getattr(run, "input_spec", None)) else run.batch_spec
  return of_config(run.config, spec)

