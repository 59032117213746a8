"""What a compiled (SPMD-partitioned) program does per device: collectives, dot FLOPs, memory.

    stats = compiled_stats.analyse(jax.jit(f).lower(*args).compile())
    stats.collectives["all-gather"].count, .bytes     # per step, loop trip counts applied
    stats.dot_flops                                     # dots + convolutions, per device
    stats.memory["temp_bytes"]

It reads the optimised HLO text (`compiled.as_text()`), so it sees what runs: the
partitioner's collectives, the loops, the fusions. Every instruction is weighted by how
often its computation runs per call of the program: a `while` body by its
`known_trip_count` (XLA annotates counted loops: `lax.scan`, `fori_loop`, `nn.scan`), its
condition by trip count + 1, fusions and called computations by their callers. A loop
whose trip count XLA does not know is counted once and reported in `unknown_trip_counts`;
both branches of a conditional are counted (an upper bound), reported in `conditionals`.

Bytes of a collective are the larger of its operand and result (the full participating
buffer: an all-gather's gathered result, a reduce-scatter's unscattered input), per device.
Pallas calls lowered for CPU are interpreted: their dots are ordinary HLO dots and count;
on GPU/TPU a kernel is a custom call, which this module does not see into (it reports
them in `custom_calls`).

Tests, `tools/bench_train.py` and the planner all use it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all",
               "collective-broadcast", "ragged-all-to-all")

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0}
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_SHAPE = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)"
                     r"=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


@dataclasses.dataclass
class CollectiveTotal:
  """One kind of collective over one step: executions and bytes per device."""
  count: int = 0
  bytes: int = 0


@dataclasses.dataclass
class StepStats:
  """Per-device totals of one call of a compiled program."""
  collectives: dict[str, CollectiveTotal]
  dot_flops: float
  memory: dict[str, int]
  custom_calls: dict[str, int]
  unknown_trip_counts: int
  conditionals: int
  # Bytes of all-reduce results that are only ever dynamic-sliced (each device keeps its
  # shard): a reduce-scatter written as all-reduce + slice. XLA:CPU emits this form; the GPU
  # and TPU compilers' ReduceScatterCreator pass rewrites exactly it into reduce-scatters.
  all_reduce_sliced_bytes: int = 0

  def collective_table(self) -> dict[str, dict[str, int]]:
    """{kind: {"count", "bytes"}} of the kinds that occur, for logs and JSON."""
    return {k: {"count": v.count, "bytes": v.bytes}
            for k, v in sorted(self.collectives.items()) if v.count}

  def as_dict(self) -> dict[str, Any]:
    return {"collectives": self.collective_table(), "dot_flops": self.dot_flops,
            "memory": dict(self.memory), "custom_calls": dict(self.custom_calls),
            "unknown_trip_counts": self.unknown_trip_counts, "conditionals": self.conditionals,
            "all_reduce_sliced_bytes": self.all_reduce_sliced_bytes}


@dataclasses.dataclass
class _Instr:
  name: str
  type: str
  op: str
  rest: str
  operands: list[str] = dataclasses.field(default_factory=list)
  is_root: bool = False


def _shapes(type_str: str) -> list[tuple[str, tuple[int, ...]]]:
  return [(dt, tuple(int(d) for d in dims.split(",") if d))
          for dt, dims in _SHAPE.findall(type_str) if dt in _DTYPE_BYTES]


def _bytes(type_str: str, largest: bool = False) -> int:
  sizes = [_DTYPE_BYTES[dt] * math.prod(dims) for dt, dims in _shapes(type_str)]
  if not sizes:
    return 0
  return int(max(sizes) if largest else sum(sizes))


def parse_computations(hlo_text: str) -> tuple[dict[str, list[_Instr]], str | None]:
  """HLO text -> ({computation name: instructions}, entry name), in printed order."""
  comps: dict[str, list[_Instr]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    if current is None:
      m = _HEADER.match(line)
      if m:
        current = m.group(2)
        comps[current] = []
        if m.group(1):
          entry = current
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _INSTR.match(line)
    if m:
      ins = _Instr(*m.groups())
      ins.operands = _operands(ins.rest)
      ins.is_root = line.lstrip().startswith("ROOT ")
      comps[current].append(ins)
  return comps, entry


def _operands(rest: str) -> list[str]:
  """Names of the operands of `op(rest` (up to the closing parenthesis of the call)."""
  depth, out = 1, []
  for i, ch in enumerate(rest):
    if ch in "({[":
      depth += 1
    elif ch in ")}]":
      depth -= 1
      if depth == 0:
        out = rest[:i]
        break
  return [tok.strip().lstrip("%").split(" ")[-1].lstrip("%")
          for tok in (out.split(",") if out else []) if tok.strip()]


def _dims_attr(rest: str, key: str) -> tuple[int, ...]:
  m = re.search(key + r"=\{([\d,]*)\}", rest)
  return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def _dot_flops(instr: _Instr, shapes: dict[str, str]) -> float:
  out = _shapes(instr.type)
  if not out:
    return 0.0
  out_elems = math.prod(out[0][1])
  ops = instr.operands
  if instr.op == "dot":
    lhs = _shapes(shapes.get(ops[0], "")) if ops else []
    if not lhs:
      return 0.0
    contract = math.prod(lhs[0][1][d] for d in _dims_attr(instr.rest, "lhs_contracting_dims"))
    return 2.0 * out_elems * contract
  # convolution: each output element is a dot over the kernel's window x input features.
  kernel = _shapes(shapes.get(ops[1], "")) if len(ops) > 1 else []
  labels = re.search(r"dim_labels=\w+_(\w+)->", instr.rest)
  if not kernel or not labels:
    return 0.0
  k_dims = kernel[0][1]
  out_features = k_dims[labels.group(1).index("o")]
  return 2.0 * out_elems * math.prod(k_dims) / max(out_features, 1)


_PASS_THROUGH = ("bitcast", "copy", "transpose", "reshape", "convert")


class _Users:
  """Who uses each value of each computation: built once per computation, on first ask."""

  def __init__(self, comps):
    self.comps, self._index = comps, {}

  def __call__(self, comp: str, value: str) -> list[_Instr]:
    if comp not in self._index:
      index: dict[str, list[_Instr]] = {}
      for ins in self.comps[comp]:
        for o in dict.fromkeys(ins.operands):
          index.setdefault(o, []).append(ins)
      self._index[comp] = index
    return self._index[comp].get(value, [])


def _only_sliced(users: _Users, comp: str, value: str, depth: int = 0) -> bool:
  """Whether every use of `value` in `comp` (through bitcasts, copies, transposes and into
  fusions) is the operand a dynamic-slice slices."""
  uses = users(comp, value)
  if not uses or depth > 8:
    return False
  comps = users.comps
  for u in uses:
    if u.op == "dynamic-slice" and u.operands[0] == value:
      continue
    if u.op in _PASS_THROUGH and _only_sliced(users, comp, u.name, depth + 1):
      continue
    callee = re.search(r"calls=%?([\w.\-]+)", u.rest)
    if u.op == "fusion" and callee and callee.group(1) in comps:
      fused = callee.group(1)
      params = {int(p.rest.split(")")[0]): p.name for p in comps[fused] if p.op == "parameter"}
      mine = [params[i] for i, o in enumerate(u.operands) if o == value and i in params]
      if all(_only_sliced(users, fused, p, depth + 1) for p in mine):
        continue
      # A fusion that only converts (bf16 compute of f32 params): follow its result outside.
      if (mine and all(_to_root(users, fused, p) for p in mine)
          and _only_sliced(users, comp, u.name, depth + 1)):
        continue
    return False
  return True


def _to_root(users: _Users, comp: str, value: str, depth: int = 0) -> bool:
  """Whether `value` reaches `comp`'s ROOT through pass-through ops only, and nothing else."""
  root = next((i for i in users.comps[comp] if i.is_root), None)
  if root is None or depth > 8:
    return False
  if value == root.name:
    return True
  uses = users(comp, value)
  return bool(uses) and all(u.op in _PASS_THROUGH and _to_root(users, comp, u.name, depth + 1)
                            for u in uses)


def _sliced_bytes(users: _Users, comp: str, ins: _Instr) -> float:
  """Bytes of the all-reduce `ins` whose results are only dynamic-sliced afterwards."""
  elements = _shapes(ins.type)
  if ins.type.lstrip().startswith("("):   # A combined all-reduce: one result per element.
    total = 0.0
    for u in users(comp, ins.name):
      if u.op == "get-tuple-element" and u.operands[:1] == [ins.name]:
        j = int(re.search(r"index=(\d+)", u.rest).group(1))
        if j < len(elements) and _only_sliced(users, comp, u.name):
          dt, dims = elements[j]
          total += _DTYPE_BYTES[dt] * math.prod(dims)
    return total
  return float(_bytes(ins.type)) if _only_sliced(users, comp, ins.name) else 0.0


def analyse_text(hlo_text: str) -> StepStats:
  """Collective and dot-FLOP totals of optimised HLO text (memory left empty)."""
  comps, entry = parse_computations(hlo_text)
  if entry is None:
    raise ValueError("No ENTRY computation in the HLO text; pass compiled.as_text() of a "
                     "compiled program.")
  # Callers are printed after their callees: walk the printed order backwards from ENTRY.
  weight = {name: 0.0 for name in comps}
  weight[entry] = 1.0
  unknown, conditionals = 0, 0
  for name in reversed(list(comps)):
    w = weight[name]
    if not w:
      continue
    for ins in comps[name]:
      trip = 1
      if ins.op == "while":
        m = _TRIP.search(ins.rest)
        if m:
          trip = int(m.group(1))
        else:
          unknown += 1
      for key, callee in _CALLEE.findall(ins.rest):
        if callee not in weight:
          continue
        factor = trip if key == "body" else (trip + 1 if key == "condition" else 1)
        weight[callee] += w * factor
      b = _BRANCHES.search(ins.rest)
      if b:
        conditionals += 1
        for callee in b.group(1).split(","):
          callee = callee.strip().lstrip("%")
          if callee in weight:
            weight[callee] += w
  collectives = {k: CollectiveTotal() for k in COLLECTIVES}
  custom: dict[str, int] = {}
  flops, sliced = 0.0, 0.0
  users = _Users(comps)
  for name, instrs in comps.items():
    w = weight[name]
    if not w:
      continue
    shapes = {ins.name: ins.type for ins in instrs}
    for ins in instrs:
      kind = ins.op[:-len("-start")] if ins.op.endswith("-start") else ins.op
      if kind in collectives:
        ops = ins.operands
        # An async start's result tuple repeats its operand: count the larger buffer. A
        # combined (tuple) collective moves all of its elements.
        result = _bytes(ins.type, largest=ins.op.endswith("-start"))
        nbytes = max(result, sum(_bytes(shapes.get(o, "")) for o in ops))
        if kind == "all-reduce":
          sliced += w * _sliced_bytes(users, name, ins)
        collectives[kind].count += int(round(w))
        collectives[kind].bytes += int(round(w * nbytes))
      elif ins.op in ("dot", "convolution"):
        flops += w * _dot_flops(ins, shapes)
      elif ins.op == "custom-call":
        m = re.search(r'custom_call_target="([^"]+)"', ins.rest)
        target = m.group(1) if m else "?"
        custom[target] = custom.get(target, 0) + int(round(w))
  return StepStats(collectives=collectives, dot_flops=flops, memory={}, custom_calls=custom,
                   unknown_trip_counts=unknown, conditionals=conditionals,
                   all_reduce_sliced_bytes=int(round(sliced)))


def memory_stats(compiled) -> dict[str, int]:
  """XLA's memory analysis of a compiled program, bytes per device; {} where unavailable."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # Some backends have no memory analysis.
    return {}
  if m is None:
    return {}
  out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
         for k in ("argument", "output", "temp", "alias", "generated_code")}
  out = {f"{k}_bytes": v for k, v in out.items()}
  out["peak_bytes_estimate"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                                - out["alias_bytes"])
  return out


# XLA:CPU expands (drops) the optimization barriers that `jax.checkpoint` puts around the
# recomputed forward pass early, in its layout-assignment pipeline (pass "cse_barrier_expander"),
# and later CSE/simplification passes then merge the recomputation with the original forward:
# every activation is kept anyway. On CPU, remat costs FLOPs and saves no memory. XLA:GPU expands
# the barriers only after scheduling. Disabling that one pass makes the CPU's memory analysis
# show what remat does on an accelerator (the program computes the same values).
KEEP_BARRIERS_FLAG = "--xla_disable_hlo_passes=cse_barrier_expander"


def remat_barriers_kept() -> bool:
  """Whether XLA_FLAGS keeps remat's barriers on CPU (KEEP_BARRIERS_FLAG)."""
  return "cse_barrier_expander" in os.environ.get("XLA_FLAGS", "")


def keep_remat_barriers() -> None:
  """Adds KEEP_BARRIERS_FLAG to XLA_FLAGS; effective only before the first backend use."""
  if remat_barriers_kept():
    return
  flags = os.environ.get("XLA_FLAGS", "").split()
  name, _, passes = KEEP_BARRIERS_FLAG.partition("=")
  for i, f in enumerate(flags):
    if f.startswith(name + "="):  # One list of disabled passes: a second flag would replace it.
      flags[i] = f + "," + passes
      break
  else:
    flags.append(KEEP_BARRIERS_FLAG)
  os.environ["XLA_FLAGS"] = " ".join(flags)


def shard_shape(sharding, shape) -> tuple[int, ...]:
  """The shape of one device's shard of an array of `shape` under a NamedSharding; an uneven
  split counts the ceiling (XLA pads)."""
  try:
    return tuple(sharding.shard_shape(shape))
  except ValueError:  # Uneven split (IndivisibleError): XLA pads, each device holds the ceiling.
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    out = []
    for dim, axes in zip(shape, spec):
      axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
      n = int(np.prod([sharding.mesh.shape[a] for a in axes], dtype=np.int64))
      out.append(-(-dim // n))
    return tuple(out)


def tree_bytes_per_device(abstract, shardings) -> int:
  """Bytes of a tree (a train state) on one device: each leaf's shard shape x itemsize, summed.

  `abstract`: the tree of (boxed) ShapeDtypeStructs or arrays; `shardings`: its shardings, a
  prefix of it with a sharding where `abstract` has an array or a box (as
  `bigvl.state.abstract` returns). A box around no array (optax's MaskedNode: a frozen param
  has no optimizer state) holds no bytes. No compilation: the sizes follow from the
  shardings alone.
  """
  import flax.linen as nn  # Local: the HLO analysis itself needs no Flax.
  import jax

  sizes = []

  def one(sharding, x):
    v = x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x
    if hasattr(v, "shape") and hasattr(v, "dtype"):
      sizes.append(int(np.prod(shard_shape(sharding, v.shape), dtype=np.int64))
                   * np.dtype(v.dtype).itemsize)
    return None

  jax.tree.map(one, shardings, abstract,
               is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  return int(sum(sizes))


def analyse(compiled) -> StepStats:
  """Per-device collectives (trip counts applied), dot FLOPs and memory of `compiled`, a
  `jax.stages.Compiled` (e.g. `jax.jit(f).lower(*args).compile()`)."""
  stats = analyse_text(compiled.as_text())
  stats.memory = memory_stats(compiled)
  return stats


def excess_collectives(stats: StepStats, reference: StepStats) -> dict[str, dict[str, int]]:
  """{kind: {"count", "bytes", "ref_count", "ref_bytes"}} where `stats` has more executions or
  more bytes of a kind than `reference`; {} when it has nothing the reference lacks."""
  out = {}
  for kind in COLLECTIVES:
    a, r = stats.collectives[kind], reference.collectives[kind]
    if a.count > r.count or a.bytes > r.bytes:
      out[kind] = {"count": a.count, "bytes": a.bytes, "ref_count": r.count,
                   "ref_bytes": r.bytes}
  return out
