"""Times the train step of any config; reports examples/s, TFLOP/s, MFU, HFU and compiled memory.

    python tools/bench_train.py --config configs/demo/siglip_digits.py[:arg] \
        [--config.key=value ...] [--steps 20] [--warmup 3] [--out result.json]
    # FLOPs and memory only, for sizes too large to run here (nothing is allocated):
    python tools/bench_train.py --config configs/demo/siglip_digits.py --model_preset siglip:B/16 \
        --config.data.text_len=64 --config.batch_size=8 \
        --config.data.train.pp="resize(224)|value_range(-1, 1)|choose_text|tokenize|keep('image', 'text')" \
        --compile_only

Everything is built as the train loop builds it (`bigvl.run.build`, `Run.create_state`,
`Run.compile_step`): same mesh, rules, model, objective, optimizer and the same AOT-
compiled, donated step. Only the batch differs: one synthetic batch of the config's batch spec
(see `synthetic_batch`), placed with the batch shardings once, so that data loading and host
-> device transfer are not timed. `config.evals` is emptied: evaluation is not part of a step.

Timing: --warmup untimed steps, then --steps steps each ended by `block_until_ready`; the
step time is their median (seconds).

FLOPs, as the loop logs them: model FLOPs per step (`bigvl/model_flops.py`: forward + backward
of the config's model on the global batch, counted from the traced loss with no remat
recomputation, Pallas kernels as their XLA references, grad_accum_steps=1) give
mfu = model_flops_per_step / step_time / (peak x devices), the loop's train/mfu. XLA's cost
analysis of the compiled (SPMD-partitioned) step gives flops_per_device_per_step (what runs on
one device: recomputation included, custom calls 0), tflops_per_device and
hfu = flops_per_device_per_step / step_time / peak, as train/tflops_per_device and train/hfu.
The peak is per device kind and compute dtype (`bigvl/mfu.py`), or --peak_tflops.

Memory, per device, from the compiled step's `memory_analysis()` (bytes): argument (train
state + batch), output (new state + metrics), alias (outputs written into donated arguments:
the state), temp (everything else alive at some point: activations kept for the backward pass,
gradients, optimizer temporaries), generated code; peak_bytes_estimate = argument + output +
temp - alias. state_bytes_per_device is the sharded train state (params + optimizer state),
summed from the shard shapes of its shardings.

Fields: config, overrides, devices, device_kind, mesh, rules, batch_size, params, remat,
step_time_s (median), step_time_min_s, examples_per_sec, model_flops_per_step,
model_flops_per_example, flops_per_device_per_step, tflops_per_device, peak_tflops, mfu, hfu
(both null without a known peak: CPU; --peak_tflops gives it), compile_s,
state_bytes_per_device, the memory fields above, and from `bigvl.compiled_stats`:
collectives ({kind: {count, bytes}} per device and step, loop trip counts applied),
dot_flops_per_device, all_reduce_sliced_bytes (docs/scale.md); with --compile_only the timing
fields are null. stdout gets exactly this one JSON object (also written to --out); progress
lines go to stderr.

On CPU: --cpu_devices=8 simulates 8 devices (as XLA_FLAGS=--xla_force_host_platform_device_count
=8 does). Remat saves no memory on plain XLA:CPU (see KEEP_BARRIERS_FLAG); --keep_remat_barriers
makes the compiled memory show what it saves on an accelerator. Numbers measured with this tool:
benchmarks/train_cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from absl import logging as absl_logging  # noqa: E402

from bigvl import compiled_stats, config_lib, mfu as mfu_lib  # noqa: E402
from bigvl import model_flops as model_flops_lib  # noqa: E402
from bigvl import run as run_lib  # noqa: E402
from bigvl import state as state_lib  # noqa: E402
from bigvl.models import presets  # noqa: E402

MEMORY_FIELDS = ("temp_bytes", "argument_bytes", "output_bytes", "alias_bytes",
                 "generated_code_bytes", "peak_bytes_estimate")


# Remat's barriers on XLA:CPU: see compiled_stats.KEEP_BARRIERS_FLAG.
KEEP_BARRIERS_FLAG = compiled_stats.KEEP_BARRIERS_FLAG
remat_barriers_kept = compiled_stats.remat_barriers_kept
keep_remat_barriers = compiled_stats.keep_remat_barriers
state_bytes_per_device = compiled_stats.tree_bytes_per_device


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Thin public wrappers over the loop's own builders (no second copy of the loop).


def load_config(spec: str, overrides: list[tuple[str, str]], model_preset: str | None = None):
  """The config as `python -m bigvl.train` loads it, optionally with a preset model, minus evals.

  `model_preset` ("siglip:B/16", "clip:L/14") replaces config.model with
  `bigvl.models.presets.<family>(<variant>)` before `overrides` apply; its towers get explicit
  `remat`/`attention_impl` keys and the model a `dtype`, at the models' defaults, so that
  `--config.model.image.remat=full` or `--config.model.dtype=bfloat16` can follow. The
  demo's data stay: its digits are grey, so the patch embedding sees 1 channel, not 3
  (SigLIP B/16: 202,762,754 params here, 203,155,970 with RGB: -0.2%).
  """
  config = config_lib.load_config_file(spec)
  if model_preset:
    family, _, variant = model_preset.partition(":")
    if family not in ("clip", "siglip") or not variant:
      raise config_lib.ConfigError(
          f"--model_preset={model_preset!r}: expected clip:<variant> or siglip:<variant>, "
          "e.g. siglip:B/16.")
    try:
      model = getattr(presets, family)(variant)
    except ValueError as e:
      raise config_lib.ConfigError(f"--model_preset={model_preset!r}: {e}") from e
    for tower in ("image", "text"):
      model[tower] = dict(dict(remat="none", attention_impl="xla", scan_layers=False),
                          **model[tower])
    model.setdefault("dtype", "float32")
    config.model = model
  config = config_lib.apply_overrides(config, overrides)
  config.evals = {}  # Not part of a train step: building evaluators would only cost time.
  return config_lib.with_defaults(config)


def build(config, workdir: str) -> run_lib.Run:
  """The run as the loop builds it (`bigvl.run.build`)."""
  return run_lib.build(config, workdir)


def abstract_state(run: run_lib.Run):
  """(abstract TrainState of ShapeDtypeStructs, its shardings): nothing allocated."""
  return run.abstract_state()


def compile_step(run: run_lib.Run, state, state_shardings):
  """The loop's compiled step and its FLOPs per device; `state` may be abstract."""
  return run.compile_step(state, state_shardings)


def synthetic_batch(run: run_lib.Run, seed: int = 0) -> dict:
  """One global batch of the config's batch spec, placed with the loop's batch shardings.

  Floating fields (images, (B, H, W, C)) are uniform in [-1, 1); integer fields (token ids
  (B, L), labels (B,)) are drawn from {1, 2}: valid for any vocabulary or class count >= 3,
  never the pad id 0 (so no all-padding text) and containing CLIP's EOS id 2. Step time does
  not depend on the values, only a non-finite loss could change the work done.
  """
  if jax.process_count() > 1:
    raise NotImplementedError("bench_train runs in one process (any number of its devices).")
  rng = np.random.default_rng(seed)
  shardings = run.batch_shardings()
  out = {}
  for k, spec in run.batch_spec.items():
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.floating):
      x = rng.uniform(-1.0, 1.0, spec.shape).astype(dtype)
    elif np.issubdtype(dtype, np.integer):
      x = rng.integers(1, 3, spec.shape).astype(dtype)
    elif dtype == np.bool_:
      x = np.ones(spec.shape, dtype)
    else:
      x = np.zeros(spec.shape, dtype)
    # One process: the global batch is the local one, split over the batch shardings.
    out[k] = jax.device_put(x, shardings[k])
  return out


def memory_stats(compiled) -> dict:
  """Per-device bytes from `compiled.memory_analysis()` (None where the backend has none)."""
  mem = compiled_stats.memory_stats(compiled)
  return {k: mem.get(k) for k in MEMORY_FIELDS}


# ------------------------------------------------------------------------------------------


def time_steps(step_fn, state, batch, steps: int, warmup: int):
  """Per-step wall times in seconds of `steps` steps after `warmup`, each fully waited for.

  `batch`: the step's arguments after the state, (model inputs, DataInfo).

  The state is donated each step, so each step consumes the previous one's output, exactly
  as in the loop. Returns (times, final state).
  """
  for i in range(warmup):
    state, m = step_fn(state, *batch)
    jax.block_until_ready((state, m))
    log(f"warm-up step {i + 1}/{warmup} done")
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, m = step_fn(state, *batch)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t0)
    log(f"step {i + 1}/{steps}: {times[-1]:.4f} s")
  return times, state


def benchmark(config, *, spec: str = "", steps: int = 10, warmup: int = 2,
              compile_only: bool = False, peak_tflops: float = 0.0,
              workdir: str | None = None) -> dict:
  """Builds, compiles and (unless `compile_only`) times the train step of `config`.

  Returns the result dict that the CLI prints (see the module docstring for its fields).
  """
  own_workdir = workdir is None
  workdir = workdir or tempfile.mkdtemp(prefix="bench_train_")
  try:
    t0 = time.perf_counter()
    run = build(config, workdir)  # Trains the tokenizer (if any) into workdir, traces the model.
    config = run.config
    shapes, shardings = abstract_state(run)
    mesh = run.mesh
    n_params = state_lib.param_count(shapes.params)
    log(f"built in {time.perf_counter() - t0:.1f}s: {jax.device_count()} "
        f"{jax.devices()[0].device_kind} device(s), mesh {dict(mesh.shape)}, "
        f"rules {config.sharding.rules!r}, {n_params:,} params, batch {config.batch_size}")

    remat = {t: config.model[t].get("remat", "none") for t in ("image", "text")
             if isinstance(config.model.get(t), (dict, config_lib.ConfigDict))}
    if (jax.devices()[0].platform == "cpu" and set(remat.values()) - {"none"}
        and not remat_barriers_kept()):
      log(f"WARNING: remat {remat} on CPU without --keep_remat_barriers: XLA:CPU merges the "
          "recomputation with the forward pass, so memory is as without remat (FLOPs are not).")

    if compile_only:
      state = shapes  # Lowering needs only shapes; the shardings come from in_shardings.
    else:
      state, shardings = run.create_state()
    t0 = time.perf_counter()
    step_fn, flops = compile_step(run, state, shardings)
    compile_s = time.perf_counter() - t0
    log(f"compiled in {compile_s:.1f}s: {flops or 0:.4g} FLOPs per device per step")
    model_flops = model_flops_lib.of_run(run)
    log(f"model FLOPs: {model_flops.per_step:.4g} per step, {model_flops.per_example:.4g} per "
        "example (forward + backward, no recomputation)")

    peak = mfu_lib.peak_tflops(peak_tflops or config.peak_tflops,
                               dtype=config.model.get("dtype", "float32"))
    result = dict(
        config=spec, compile_only=compile_only,
        devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
        platform=jax.devices()[0].platform, mesh=dict(mesh.shape),
        rules=config.sharding.rules if isinstance(config.sharding.rules, str)
        else [list(r) for r in config.sharding.rules],
        batch_size=config.batch_size, grad_accum_steps=config.grad_accum_steps,
        params=n_params, dtype=str(config.model.get("dtype", "float32")),
        remat=remat, xla_flags=os.environ.get("XLA_FLAGS", ""),
        steps=None, warmup=None, step_time_s=None, step_time_min_s=None,
        examples_per_sec=None, model_flops_per_step=model_flops.per_step,
        model_flops_per_example=model_flops.per_example, flops_per_device_per_step=flops,
        tflops_per_device=None, peak_tflops=peak, mfu=None, hfu=None,
        compile_s=round(compile_s, 3),
        state_bytes_per_device=state_bytes_per_device(shapes, shardings))
    result.update(memory_stats(step_fn))
    # What the partitioned program runs per device (bigvl.compiled_stats; docs/scale.md).
    stats = compiled_stats.analyse(step_fn)
    result.update(collectives=stats.collective_table(), dot_flops_per_device=stats.dot_flops,
                  all_reduce_sliced_bytes=stats.all_reduce_sliced_bytes)

    if not compile_only:
      batch = (synthetic_batch(run, config.seed), run_lib.empty_data_info(run))
      times, state = time_steps(step_fn, state, batch, steps, warmup)
      del state
      median = statistics.median(times)
      result.update(steps=steps, warmup=warmup, step_time_s=median, step_time_min_s=min(times),
                    examples_per_sec=config.batch_size / median)
      if flops:
        result["tflops_per_device"] = flops / median / 1e12
      result["mfu"] = mfu_lib.utilization(model_flops.per_step, 1 / median, peak,
                                          jax.device_count())
      result["hfu"] = mfu_lib.utilization(flops, 1 / median, peak, 1)
    return result
  finally:
    if own_workdir:
      shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv):
  """(config spec, [(key, value)] overrides, argparse namespace) from argv (no program name)."""
  spec, overrides, rest = config_lib.split_config_flags(list(argv))
  p = argparse.ArgumentParser(
      prog="bench_train.py", description=__doc__.split("\n\n")[0],
      epilog="Also: --config PATH[:ARG] (required) and any number of --config.KEY=VALUE.")
  p.add_argument("--steps", type=int, default=10, help="Timed steps (median reported).")
  p.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
  p.add_argument("--compile_only", action="store_true",
                 help="Compile only: FLOPs and memory, no state allocated, no timing.")
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="Peak TFLOP/s of one device for MFU; 0: config.peak_tflops, else the "
                      "table by device kind (none for CPU: mfu is null).")
  p.add_argument("--model_preset", default=None,
                 help="Replace config.model by bigvl.models.presets, e.g. siglip:B/16, "
                      "clip:L/14 (before the --config.* overrides).")
  p.add_argument("--cpu_devices", type=int, default=0,
                 help="Simulate this many CPU devices (jax_num_cpu_devices); 0: leave as is.")
  p.add_argument("--keep_remat_barriers", action="store_true",
                 help="CPU: keep remat's optimization barriers through CSE, as XLA:GPU does "
                      f"(adds {KEEP_BARRIERS_FLAG} to XLA_FLAGS). Without it XLA:CPU merges the "
                      "recomputation with the forward pass and remat saves no memory.")
  p.add_argument("--workdir", default=None,
                 help="Where the tokenizer is trained/read; default a temporary directory.")
  p.add_argument("--out", default=None, help="Also write the JSON result to this file.")
  args = p.parse_args(rest)
  if spec is None:
    p.error("--config is required, e.g. --config configs/demo/siglip_digits.py")
  if args.steps < 1 or args.warmup < 0:
    p.error("--steps must be >= 1 and --warmup >= 0.")
  return spec, overrides, args


def main(argv=None) -> int:
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    spec, overrides, args = parse_args(sys.argv[1:] if argv is None else argv)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  # Both must precede the first use of a backend (XLA reads its flags when the client starts).
  if args.cpu_devices:
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  if args.keep_remat_barriers:
    keep_remat_barriers()
  try:
    config = load_config(spec, overrides, args.model_preset)
    result = benchmark(config, spec=spec, steps=args.steps, warmup=args.warmup,
                       compile_only=args.compile_only, peak_tflops=args.peak_tflops,
                       workdir=args.workdir)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  result["overrides"] = {k: v for k, v in overrides}
  if args.model_preset:
    result["model_preset"] = args.model_preset
  text = json.dumps(result)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(json.dumps(result, indent=2) + "\n")
  print(text, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
