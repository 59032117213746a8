"""The planner: does a config fit the pod it names, and how long will it take, before renting one.

    python -m bigvl.plan --config configs/siglip/b16.py --topology v5e-256
    python -m bigvl.plan --config configs/siglip/so400m14.py:res=384 --devices 8 \
        --device_memory_gib 16 [--peak_tflops 197] [--mfu 0.4] [--config.key=value ...] \
        [--json plan.json]

It builds the run exactly as `python -m bigvl.train` does (`bigvl.run.build`), but reads no
data: `config.data.train` is replaced by `config.data.stand_in` (a synthetic source of the
same fields; the config's own pp runs on it), a tokenizer file it cannot read locally by one
trained on the stand-in's captions (the model's vocabulary size stays the config's), and
evaluators are dropped. The step is then compiled, ahead of time and without allocating, for
`--devices` simulated CPU devices (the process re-executes itself with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, and with remat's barriers kept so the
memory analysis shows what remat saves on an accelerator: compiled_stats.KEEP_BARRIERS_FLAG).

What it prints, per device unless said:
- params per top-level module (tower) and in all;
- model FLOPs per example, forward + backward (`bigvl.model_flops`, the count `train/mfu`
  divides by);
- the train state (params, optimizer state, objective state) and the batch under the
  config's shardings, from the shard shapes (`compiled_stats.tree_bytes_per_device`): exact;
- the compiled step's temporary memory (`memory_analysis()` of the XLA:CPU program, same
  partitioning as on the accelerator). XLA:TPU/GPU fuse and schedule differently, so this
  figure is an estimate of theirs (docs/configs.md compares them where measured);
- collectives per step by kind, count and bytes (`bigvl.compiled_stats`, loop trip counts
  applied). XLA:CPU writes a reduce-scatter as all-reduce + dynamic-slice; that part is shown
  as "(reduce-scatter on TPU/GPU)";
- the step time and days to train at `--mfu` of the device's peak.

The exit status is 0 when state + batch + temporaries fit `--device_memory_gib`, 1 when they
do not (the last line says what to change: shard the state with fsdp, recompute activations
with remat, or a smaller per-device batch with grad_accum_steps), 2 on a config error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One kind of accelerator, `devices` of it: what jax.devices() lists (a TPU v4 or v5p chip
  is one device: its two TensorCores act as one)."""
  name: str
  devices: int
  memory_gib: float
  peak_tflops: float   # bf16 dense, per device (bigvl.mfu.PEAK_TFLOPS).


# Named topologies: (prefix, chips per name unit, HBM GiB per device, peak TFLOP/s bf16).
# Cloud TPU names v4-N and v5p-N count TensorCores (2 per chip); v5e-N and v6e-N count chips.
TOPOLOGIES = {
    "v4": (2, 32.0, 275.0),
    "v5p": (2, 95.0, 459.0),
    "v5e": (1, 16.0, 197.0),
    "v6e": (1, 32.0, 918.0),
    "a100x": (1, 80.0, 312.0),
    "h100x": (1, 80.0, 989.4),
    "h200x": (1, 141.0, 989.4),
}


def hardware(topology: str = "", devices: int = 0, memory_gib: float = 0.0,
             peak_tflops: float = 0.0) -> Hardware:
  """A named topology ("v5e-256", "v4-128", "v5p-128", "h100x64"), or `devices` of
  `memory_gib` each; explicit values override the topology's."""
  if topology:
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)|(a100x|h100x|h200x)(\d+)", topology.lower())
    if not m:
      raise ValueError(f"--topology={topology!r}: unknown; give one of v4-N, v5p-N, v5e-N, "
                       "v6e-N, a100xN, h100xN, h200xN (e.g. v5e-256), or --devices and "
                       "--device_memory_gib.")
    kind = m.group(1) or m.group(3)
    count = int(m.group(2) or m.group(4))
    per_chip, mem, peak = TOPOLOGIES[kind]
    if count % per_chip:
      raise ValueError(f"--topology={topology!r}: {kind} sizes count TensorCores, "
                       f"{per_chip} per chip; give a multiple of {per_chip}.")
    devices = devices or count // per_chip
    memory_gib = memory_gib or mem
    peak_tflops = peak_tflops or peak
  if devices < 1 or memory_gib <= 0:
    raise ValueError("Give --topology, or --devices N and --device_memory_gib G (both > 0).")
  return Hardware(name=topology or f"{devices} devices", devices=devices, memory_gib=memory_gib,
                  peak_tflops=peak_tflops)


@dataclasses.dataclass
class Plan:
  """What `plan` found; bytes and FLOPs are per device unless named otherwise."""
  config: str
  hardware: Hardware
  mesh: dict
  rules: Any
  batch_size: int
  per_device_batch: int
  grad_accum_steps: int
  total_steps: int
  params: dict                   # {top-level module: count}, plus "total".
  model_flops_per_example: float  # Forward + backward (bigvl.model_flops).
  model_flops_per_step: float     # Global batch.
  state_bytes: dict               # {"params", "opt_state", "objective_state", "total"}.
  batch_bytes: int
  temp_bytes: int | None          # Compiled step's temporaries (None: not compiled).
  compiled_memory: dict           # compiled_stats.memory_stats of the step ({} if not compiled).
  collectives: dict               # {kind: {"count", "bytes"}}.
  all_reduce_sliced_bytes: int
  compile_s: float | None
  mfu: float
  notes: list
  no_remat: list = dataclasses.field(default_factory=list)  # Model blocks with remat "none".

  @property
  def predicted_bytes(self) -> int | None:
    """State + batch + the step's temporaries: what one device must hold at the peak."""
    if self.temp_bytes is None:
      return None
    return self.state_bytes["total"] + self.batch_bytes + self.temp_bytes

  @property
  def fits(self) -> bool | None:
    b = self.predicted_bytes
    return None if b is None else b <= self.hardware.memory_gib * GIB

  @property
  def step_time_s(self) -> float | None:
    if not self.hardware.peak_tflops:
      return None
    rate = self.hardware.devices * self.hardware.peak_tflops * 1e12 * self.mfu
    return self.model_flops_per_step / rate

  @property
  def days(self) -> float | None:
    t = self.step_time_s
    return None if t is None else t * self.total_steps / 86400

  def suggestions(self) -> list[str]:
    """What to change when it does not fit, most effective first."""
    if self.fits is not False:
      return []
    mem = self.hardware.memory_gib * GIB
    out = []
    state = self.state_bytes["total"]
    fsdp = int(self.mesh.get("fsdp", 1))
    n = self.hardware.devices
    if fsdp == 1 and n > 1 and state > 0.1 * mem:  # Sharding a small state saves nothing.
      k = n  # Over all devices: the batch stays split over them all (data x fsdp).
      out.append(f"shard the train state over devices: --config.sharding.rules=fsdp "
                 f"--config.sharding.mesh.fsdp={k} --config.sharding.mesh.data=-1 (state "
                 f"{_gib(state)} -> about {_gib(state / k)} per device)")
    room = mem - min(state, state / max(fsdp, 1)) - self.batch_bytes
    if self.temp_bytes and self.temp_bytes > room:
      if self.no_remat:
        out.append("recompute activations in the backward pass: " + " ".join(
            f"--config.model.{k}.remat=full" for k in self.no_remat)
                   + " (or dots_saveable)")
      k = 2 ** max(1, math.ceil(math.log2(self.temp_bytes / max(room, 1) + 1e-9)))
      while self.per_device_batch % k and k > 1:
        k //= 2
      if k > 1:
        out.append(f"a smaller per-device batch: --config.grad_accum_steps="
                   f"{self.grad_accum_steps * k} (micro-batch {self.per_device_batch // k} per "
                   f"device; temporaries scale about with it)")
    return out

  def as_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out.update(predicted_bytes=self.predicted_bytes, fits=self.fits,
               step_time_s=self.step_time_s, days=self.days, suggestions=self.suggestions())
    return out


def _gib(b: float) -> str:
  """Bytes in GiB, or MiB/KiB where GiB would print 0.00."""
  for unit, size in (("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if abs(b) >= 0.1 * size or unit == "KiB":
      return f"{b / size:.2f} {unit}"


def _param_groups(params: dict) -> list[str]:
  """"img 92.88M", ...; numbered siblings in one entry ("xattn0-35 36 x 19.35M")."""
  groups: dict[str, list] = {}
  for k, v in params.items():
    if k == "total":
      continue
    m = re.fullmatch(r"(.*\D)(\d+)", k)
    groups.setdefault(m.group(1) if m else k, []).append((int(m.group(2)) if m else None, k, v))
  out = []
  for prefix, items in groups.items():
    if len(items) > 2 and all(i is not None for i, _, _ in items):
      idx = sorted(i for i, _, _ in items)
      total = sum(v for _, _, v in items)
      each = {v for _, _, v in items}
      size = f"{len(items)} x {_human(each.pop())}" if len(each) == 1 else _human(total)
      out.append(f"{prefix}{idx[0]}-{idx[-1]} {size}")
    else:
      out += [f"{k} {_human(v)}" for _, k, v in items]
  return out


def _human(n: float) -> str:
  for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= size:
      return f"{n / size:.2f}{unit}"
  return f"{n:.0f}"


def planning_config(config, notes: list):
  """`config` (resolved) with the stand-in data, a tokenizer it can make, and no evaluators."""
  from bigvl import config_lib, storage

  config = config_lib.ConfigDict(config.to_dict())
  data = config.data
  if data.get("stand_in"):
    pp = data.train.get("pp")
    data.train = dict(data.stand_in.to_dict(), **({"pp": pp} if pp else {}))
    notes.append(f"data: config.data.stand_in ({data.stand_in.get('name')}) in place of "
                 "config.data.train; nothing is read.")
  tok = data.get("tokenizer", "")
  readable = bool(tok) and not storage.is_remote(tok) and os.path.exists(tok)
  if not readable:
    if tok and _has_unset_vocab(config.model):
      raise config_lib.ConfigError(
          f"config.data.tokenizer={tok!r} is not readable here and the model takes its "
          "vocabulary size from it: set the model's vocab_size explicitly to plan it.")
    # A tokenizer trained here would have data.vocab_size pieces: the model keeps that size,
    # while the stand-in's few captions train a small one (ids stay below either).
    _fill_unset_vocab(config.model, int(data.get("vocab_size", 64)))
    data.tokenizer = ""
    data.vocab_size = min(int(data.get("vocab_size", 64)), 64)
    notes.append((f"tokenizer: {tok} is not read; " if tok else "tokenizer: ")
                 + "one trained on the stand-in's captions tokenizes (the model's vocabulary "
                 "is the config's).")
  config.evals = {}
  return config


def _fill_unset_vocab(node, size: int) -> None:
  if hasattr(node, "items"):
    for k, v in node.items():
      if k == "vocab_size" and v is None:
        node[k] = size
      else:
        _fill_unset_vocab(v, size)


def _has_unset_vocab(node) -> bool:
  if hasattr(node, "items"):
    return any((k == "vocab_size" and v is None) or _has_unset_vocab(v)
               for k, v in node.items())
  return False


def plan(config, hw: Hardware, *, mfu: float = 0.4, compile: bool = True,
         spec: str = "") -> Plan:
  """The plan of `config` (a ConfigDict as `config_lib.load_config_file` returns it) on `hw`.

  Needs `hw.devices` JAX devices in this process (simulated CPU devices: see `main`);
  `compile=False` skips the compiled step (no temporaries, no collectives), for the cheap
  figures alone.
  """
  import jax

  from bigvl import compiled_stats, config_lib
  from bigvl import model_flops as model_flops_lib
  from bigvl import run as run_lib
  from bigvl import sharding as sh
  from bigvl import state as state_lib

  if jax.device_count() != hw.devices:
    raise config_lib.ConfigError(
        f"The plan is for {hw.devices} devices but this process has {jax.device_count()}: run "
        f"`python -m bigvl.plan` (it simulates them), or set XLA_FLAGS="
        f"--xla_force_host_platform_device_count={hw.devices} before jax starts.")
  notes = []
  config = planning_config(config_lib.with_defaults(config), notes)
  run = run_lib.build(config, None)
  config = run.config
  shapes, shardings = run.abstract_state()
  params = {k: state_lib.param_count(v) for k, v in sorted(shapes.params.items())}
  params["total"] = state_lib.param_count(shapes.params)
  part = {f: compiled_stats.tree_bytes_per_device(getattr(shapes, f), getattr(shardings, f))
          for f in ("params", "opt_state", "objective_state")}
  total_state = compiled_stats.tree_bytes_per_device(shapes, shardings)
  part["total"] = total_state
  batch_shardings = run.batch_shardings()
  batch_bytes = compiled_stats.tree_bytes_per_device(
      dict(run.batch_spec), {k: batch_shardings[k] for k in run.batch_spec})
  flops = model_flops_lib.of_run(run)
  dp = sh.data_parallel_size(run.mesh, run.rules)

  temp, memory, collectives, sliced, compile_s = None, {}, {}, 0, None
  if compile:
    t0 = time.perf_counter()
    compiled, _ = run.compile_step(shapes, shardings)
    compile_s = time.perf_counter() - t0
    stats = compiled_stats.analyse(compiled)
    memory = dict(stats.memory)
    temp = memory.get("temp_bytes")
    collectives = stats.collective_table()
    sliced = stats.all_reduce_sliced_bytes
    if jax.devices()[0].platform == "cpu":
      notes.append(f"temporaries: memory_analysis() of the step compiled by XLA:CPU for "
                   f"{hw.devices} simulated devices (same SPMD partitioning; TPU/GPU fusion and "
                   "scheduling differ, so treat it as an estimate of theirs)"
                   + ("" if compiled_stats.remat_barriers_kept() else
                      "; remat barriers NOT kept: remat's savings are not shown"))
  no_remat = [k for k, v in config.model.items()
              if hasattr(v, "get") and v.get("remat", None) == "none"]
  return Plan(config=spec, hardware=hw, mesh=dict(run.mesh.shape), no_remat=no_remat,
              rules=config.sharding.rules if isinstance(config.sharding.rules, str)
              else [list(r) for r in config.sharding.rules],
              batch_size=config.batch_size, per_device_batch=config.batch_size // dp,
              grad_accum_steps=config.grad_accum_steps, total_steps=config.total_steps,
              params=params, model_flops_per_example=flops.per_example,
              model_flops_per_step=flops.per_step, state_bytes=part, batch_bytes=batch_bytes,
              temp_bytes=temp, compiled_memory=memory, collectives=collectives,
              all_reduce_sliced_bytes=sliced, compile_s=compile_s, mfu=mfu, notes=notes)


def report(p: Plan) -> str:
  """The plan as the CLI prints it."""
  hw = p.hardware
  lines = [f"bigvl plan: {p.config or 'config'} on {hw.name}: {hw.devices} devices of "
           f"{hw.memory_gib:g} GiB, {hw.peak_tflops:g} TFLOP/s peak (bf16) each",
           f"  mesh {p.mesh}, rules {p.rules}; batch {p.batch_size} = {p.per_device_batch} per "
           f"device" + (f" in {p.grad_accum_steps} micro-batches" if p.grad_accum_steps > 1
                        else "") + f"; {p.total_steps:,} steps",
           "params:   " + ", ".join(_param_groups(p.params)) + f"; total {p.params['total']:,}",
           f"model FLOPs per example (forward + backward): {p.model_flops_per_example:.4g} "
           f"({p.model_flops_per_step:.4g} per step; the count train/mfu uses)",
           "memory per device:",
           f"  train state  {_gib(p.state_bytes['total'])} (params "
           f"{_gib(p.state_bytes['params'])}, optimizer {_gib(p.state_bytes['opt_state'])}, "
           f"objective {_gib(p.state_bytes['objective_state'])}; from the shardings)",
           f"  batch        {_gib(p.batch_bytes)}"]
  if p.temp_bytes is not None:
    lines += [f"  step temps   {_gib(p.temp_bytes)} (compiled step, memory_analysis)",
              f"  total        {_gib(p.predicted_bytes)} of {hw.memory_gib:g} GiB: "
              + ("fits" if p.fits else "DOES NOT FIT")]
    lines.append("collectives per step per device:")
    if not p.collectives:
      lines.append("  none")
    for kind, v in p.collectives.items():
      extra = ""
      if kind == "all-reduce" and p.all_reduce_sliced_bytes:
        extra = (f" ({_human(p.all_reduce_sliced_bytes)}B of it sliced after: "
                 "reduce-scatter on TPU/GPU)")
      lines.append(f"  {kind:18s} {v['count']:6d} x, {_human(v['bytes'])}B{extra}")
    lines.append(f"  (compiled in {p.compile_s:.1f} s)")
  if p.step_time_s is not None:
    lines.append(f"time at {p.mfu:.0%} MFU: {p.step_time_s:.3f} s per step, {p.days:.2f} days "
                 f"for {p.total_steps:,} steps ({_human(p.total_steps * p.batch_size)} "
                 "examples)")
  lines += [f"note: {n}" for n in p.notes]
  if p.fits is False:
    need = p.predicted_bytes
    lines.append(f"DOES NOT FIT: {_gib(need)} per device of {hw.memory_gib:g} GiB. Try: "
                 + "; or ".join(p.suggestions()) + ".")
  return "\n".join(lines)


def _ensure_devices(n: int, argv: list[str]) -> None:
  """Re-executes this CLI with `n` simulated CPU devices (and remat barriers kept) unless the
  environment already gives them: the device count is fixed when jax starts."""
  flag = f"--xla_force_host_platform_device_count={n}"
  flags = os.environ.get("XLA_FLAGS", "")
  if flag in flags.split() and os.environ.get("JAX_PLATFORMS") == "cpu":
    return
  from bigvl import compiled_stats

  flags = " ".join(f for f in flags.split()
                   if not f.startswith("--xla_force_host_platform_device_count="))
  os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  compiled_stats.keep_remat_barriers()
  os.execv(sys.executable, [sys.executable, "-m", "bigvl.plan", *argv])


def main(argv: list[str]) -> int:
  import argparse

  from bigvl import config_lib

  try:
    spec, overrides, rest = config_lib.split_config_flags(list(argv))
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  p = argparse.ArgumentParser(prog="python -m bigvl.plan", description=__doc__.split("\n")[0])
  p.add_argument("--topology", default="", help="v5e-256, v4-128, v5p-128, v6e-64, h100x64, ...")
  p.add_argument("--devices", type=int, default=0, help="Devices (overrides the topology's).")
  p.add_argument("--device_memory_gib", type=float, default=0.0,
                 help="Memory of one device in GiB (overrides the topology's).")
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="Peak TFLOP/s of one device (default: the topology's; 0: no time).")
  p.add_argument("--mfu", type=float, default=0.4, help="MFU the step time assumes.")
  p.add_argument("--no_compile", action="store_true",
                 help="Params, FLOPs and state only: no compiled step (seconds, not minutes).")
  p.add_argument("--json", default="", help="Also write the plan as JSON here.")
  args = p.parse_args(rest)
  if not spec:
    p.error("--config is required (e.g. --config configs/siglip/b16.py).")
  try:
    hw = hardware(args.topology, args.devices, args.device_memory_gib, args.peak_tflops)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not 0 < args.mfu <= 1:
    print(f"error: --mfu={args.mfu} must be in (0, 1].", file=sys.stderr)
    return 2
  _ensure_devices(hw.devices, list(argv))
  try:
    config = config_lib.apply_overrides(config_lib.load_config_file(spec), overrides)
    result = plan(config, hw, mfu=args.mfu, compile=not args.no_compile, spec=spec)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(report(result), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result.as_dict(), f, indent=1, default=str)
  return 1 if result.fits is False else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
