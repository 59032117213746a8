"""Logical axis names, the device mesh, and the rules that map one to the other.

Models annotate params and activations with the logical names below; only this
module and the config's rules know the mesh axes (`data`, `fsdp`, `tensor`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Logical axis names used by modules.
BATCH = "batch"
LENGTH = "length"     # Sequence / token positions.
EMBED = "embed"       # Model width.
MLP = "mlp"           # MLP hidden.
HEADS = "heads"
KV = "kv"             # Per-head dim.
VOCAB = "vocab"
CLASSES = "classes"

MESH_AXES = ("data", "fsdp", "tensor")

RULE_PRESETS: dict[str, tuple[tuple[str, Any], ...]] = {
    # Pure data parallel: params replicated, batch over every device.
    "dp": ((BATCH, ("data", "fsdp")),),
    # ZeRO-3: params and optimizer state split along the model width over `fsdp`.
    "fsdp": ((BATCH, ("data", "fsdp")), (EMBED, "fsdp")),
    # FSDP + Megatron tensor parallel: heads and MLP hidden split over `tensor`.
    "fsdp_tp": ((BATCH, ("data", "fsdp")), (EMBED, "fsdp"), (MLP, "tensor"), (HEADS, "tensor"),
                (VOCAB, "tensor")),
}


def make_mesh(mesh_cfg: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh; one size may be -1 (the rest of the devices)."""
  devices = list(devices if devices is not None else jax.devices())
  unknown = set(mesh_cfg) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"Unknown mesh axes {sorted(unknown)} in config.sharding.mesh; "
                     f"valid: {MESH_AXES}.")
  sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
  n = len(devices)
  if sizes.count(-1) > 1:
    raise ValueError("config.sharding.mesh: at most one axis may be -1.")
  if -1 in sizes:
    rest = int(np.prod([s for s in sizes if s != -1]))
    if n % rest:
      raise ValueError(f"config.sharding.mesh={dict(zip(MESH_AXES, sizes))}: the fixed axes "
                       f"({rest}) do not divide the {n} devices.")
    sizes[sizes.index(-1)] = n // rest
  if int(np.prod(sizes)) != n:
    raise ValueError(f"config.sharding.mesh={dict(zip(MESH_AXES, sizes))} needs "
                     f"{int(np.prod(sizes))} devices but {n} are available; make the product "
                     f"of the axes {n}, or set one axis to -1.")
  dev = np.asarray(devices).reshape(sizes)
  return Mesh(dev, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def get_rules(rules: Any) -> tuple[tuple[str, Any], ...]:
  """The logical->mesh rules: a preset name or an explicit list of pairs."""
  if isinstance(rules, str):
    if rules not in RULE_PRESETS:
      raise ValueError(f"Unknown sharding rules preset {rules!r}; "
                       f"valid: {sorted(RULE_PRESETS)}.")
    return RULE_PRESETS[rules]
  return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in rules)


def data_parallel_size(mesh: Mesh, rules) -> int:
  """How many ways the batch is split under `rules`."""
  spec = logical_to_mesh_spec((BATCH,), rules)
  axes = spec[0]
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def current_axes(logical: str, exclude: Sequence[str] = ()) -> tuple[str, ...]:
  """The mesh axes the logical axis `logical` is split over here, e.g. ("data", "fsdp").

  Reads the active flax logical-axis rules (`nn.logical_axis_rules(...)`) and the current
  mesh (`jax.set_mesh(...)`; inside jit the abstract mesh), as the train step traces under
  both. Axes of size 1, axes the mesh does not have, and `exclude` (axes another dimension
  of the same array already uses) are left out: they split nothing here. Returns ()
  outside a mesh, without a rule for `logical`, or on a single device.
  """
  import flax.linen as nn  # Flax only here: the rest of this module needs none of it.
  mesh = jax.sharding.get_abstract_mesh()
  axes = logical_to_mesh_spec((logical,), nn.get_logical_axis_rules())[0]
  if mesh.empty or axes is None:
    return ()
  axes = axes if isinstance(axes, tuple) else (axes,)
  return tuple(a for a in axes
               if a in mesh.axis_names and mesh.shape[a] > 1 and a not in exclude)


def current_batch_axes() -> tuple[str, ...]:
  """`current_axes(BATCH)`: the mesh axes the batch is split over here."""
  return current_axes(BATCH)


def axes_size(axes: Sequence[str]) -> int:
  """How many shards the current (abstract) mesh's `axes` make together (1 for none)."""
  mesh = jax.sharding.get_abstract_mesh()
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def logical_to_mesh_spec(logical: Sequence[str | None], rules) -> P:
  """Maps a tuple of logical names to a PartitionSpec; unmapped names are replicated."""
  table = dict(rules)
  out, used = [], set()
  for name in logical:
    axes = table.get(name) if name is not None else None
    # A mesh axis may shard only one dimension of an array.
    flat = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
    if any(a in used for a in flat):
      axes = None
    else:
      used.update(flat)
    out.append(axes)
  return P(*out)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Sharding of a batch array: leading dim over the batch axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_mesh_spec((BATCH,) + (None,) * (ndim - 1), rules))


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
  """Assembles each process's share of the batch into global arrays sharded over the batch axes."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, x.ndim), x),
      local_batch)


def to_host(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-process) global array, on every host, as NumPy."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
