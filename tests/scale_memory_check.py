"""Compiled-memory checks of a B/16 two-tower model for tests/test_scale_memory.py.

    # Train state per device, data parallel (data=8) vs FSDP (fsdp=8): needs 8 devices.
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/scale_memory_check.py state
    # Quick: the same from the shardings' shard shapes only, no compiling.
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/scale_memory_check.py state_analytic
    # Step memory and collectives, dp=8 vs fsdp=8, remat full, layer-scanned (8 devices, barriers kept).
    XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_disable_hlo_passes=cse_barrier_expander" \
        python tests/scale_memory_check.py fsdp_step
    # Step temp memory per remat policy (1 device; the flag: see KEEP_BARRIERS_FLAG in the tool).
    XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander python tests/scale_memory_check.py remat

The model is SigLIP B/16 (`bigvl.models.presets.siglip("B/16")`: 203M params; 1-channel images
here, as the digits are grey) on 224px images and 64 tokens, built through the SigLIP demo
config with the same overrides `tools/bench_train.py --model_preset siglip:B/16` takes, and
compiled as the train loop compiles it. Nothing is allocated: every number is XLA's
`memory_analysis()` of a compiled program, in bytes per device.

Progress goes to stderr; the last line of stdout is one JSON object {check: results}. This
script asserts nothing, so that every number reaches the test report.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo", "siglip_digits.py")
PRESET = "siglip:B/16"
# The reference's inputs: 224px images, 64 tokens. No augmentation: only the shapes matter.
B16_OVERRIDES = [
    ("data.train.pp", "resize(224)|value_range(-1, 1)|choose_text|tokenize|keep('image', 'text')"),
    ("data.text_len", "64"),
]


def _load_tool():
  from conftest import load_tool  # This script runs from tests/, beside conftest.py.
  return load_tool("bench_train")


tool = _load_tool()
log = tool.log


def b16_config(batch_size: int, overrides=()):
  return tool.load_config(DEMO, B16_OVERRIDES + [("batch_size", str(batch_size))] + list(overrides),
                          model_preset=PRESET)


def check_state(workdir: str, batch_size: int = 8, compiled: bool = True) -> dict:
  """Per-device bytes of the sharded train state (params + AdamW mu, nu), dp=8 vs fsdp=8.

  `output_bytes`: the compiled `jit(init, out_shardings=state_shardings)` of the loop's init,
  whose output is exactly the state each device holds (~40 s of compiling per layout on 2
  cores: the random initialisers of 200 arrays). `analytic_bytes`: the shard shapes of the
  same shardings, summed (instant; with compiled=False the only figure). `params_bytes`: the
  params alone. `ratio`: dp / fsdp of output_bytes (else analytic_bytes).
  """
  out = {}
  for rules, mesh in (("dp", "{'data': 8, 'fsdp': 1, 'tensor': 1}"),
                      ("fsdp", "{'data': 1, 'fsdp': 8, 'tensor': 1}")):
    t0 = time.perf_counter()
    config = b16_config(batch_size, [("sharding.rules", rules), ("sharding.mesh", mesh)])
    run = tool.build(config, workdir)
    shapes, shardings = tool.abstract_state(run)
    r = dict(mesh=dict(run.mesh.shape), params=tool.state_lib.param_count(shapes.params),
             analytic_bytes=tool.state_bytes_per_device(shapes, shardings),
             params_bytes=tool.state_bytes_per_device(shapes.params, shardings.params))
    if compiled:
      with run.context():
        program = jax.jit(run.state_init(), out_shardings=shardings).lower(
            jax.random.PRNGKey(config.seed)).compile()
      mem = program.memory_analysis()
      r.update(output_bytes=int(mem.output_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes))
    r["seconds"] = round(time.perf_counter() - t0, 1)
    out[rules] = r
    log(f"state {rules}: {r}")
  key = "output_bytes" if compiled else "analytic_bytes"
  out["ratio"] = out["dp"][key] / out["fsdp"][key]
  out["ratio_of"] = key
  log(f"state: dp / fsdp per-device {key} = {out['ratio']:.3f}")
  return out


def check_remat(workdir: str, batch_size: int = 32,
                policies=("none", "full", "dots_saveable")) -> dict:
  """The compiled B/16 train step's memory per remat policy (both towers), on this process's mesh.

  Compiled on the abstract state (nothing allocated), exactly as `bench_train --compile_only`
  (~40 s each on 2 cores). Batch 32: at 8 the peak is the optimizer update (four param-sized
  buffers), where full and dots_saveable tie; at 32 activations dominate and all three differ.
  On CPU the numbers mean something only with XLA_FLAGS=KEEP_BARRIERS_FLAG (see
  tools/bench_train.py): without it XLA:CPU undoes remat and all three are alike.
  """
  out = {"devices": jax.device_count(), "batch_size": batch_size,
         "barriers_kept": tool.remat_barriers_kept(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
  for policy in policies:
    t0 = time.perf_counter()
    config = b16_config(batch_size, [("model.image.remat", policy), ("model.text.remat", policy)])
    run = tool.build(config, workdir)
    shapes, shardings = tool.abstract_state(run)
    compiled, flops = tool.compile_step(run, shapes, shardings)
    out[policy] = dict(tool.memory_stats(compiled), flops_per_device_per_step=flops,
                       seconds=round(time.perf_counter() - t0, 1))
    log(f"remat {policy}: {out[policy]}")
  return out


def check_fsdp_step(workdir: str, per_device: int = 8, scan: bool = True) -> dict:
  """The compiled B/16 train step per device, data parallel (data=8) vs FSDP (fsdp=8), both
  towers remat full and (with `scan`) layer-scanned: memory and collectives.

  Needs 8 devices and XLA_FLAGS with KEEP_BARRIERS_FLAG (remat's barriers kept, see
  tools/bench_train.py). Batch `per_device` x 8. Collectives come from
  `bigvl.compiled_stats` (trip counts applied).
  """
  from bigvl import compiled_stats
  out = {"devices": jax.device_count(), "batch_size": per_device * 8, "scan": scan,
         "barriers_kept": tool.remat_barriers_kept()}
  for rules, mesh in (("dp", "{'data': 8, 'fsdp': 1, 'tensor': 1}"),
                      ("fsdp", "{'data': 1, 'fsdp': 8, 'tensor': 1}")):
    t0 = time.perf_counter()
    overrides = [("sharding.rules", rules), ("sharding.mesh", mesh),
                 ("model.image.remat", "full"), ("model.text.remat", "full"),
                 ("model.image.scan_layers", str(scan)), ("model.text.scan_layers", str(scan))]
    run = tool.build(b16_config(per_device * 8, overrides), workdir)
    shapes, shardings = tool.abstract_state(run)
    compiled, _ = tool.compile_step(run, shapes, shardings)
    stats = compiled_stats.analyse(compiled)
    out[rules] = dict(stats.memory, collectives=stats.collective_table(),
                      all_reduce_sliced_bytes=stats.all_reduce_sliced_bytes,
                      dot_flops=stats.dot_flops, mesh=dict(run.mesh.shape),
                      seconds=round(time.perf_counter() - t0, 1))
    log(f"fsdp_step {rules}: {out[rules]}")
  out["temp_ratio"] = out["fsdp"]["temp_bytes"] / out["dp"]["temp_bytes"]
  log(f"fsdp_step: fsdp / dp temp bytes = {out['temp_ratio']:.3f}")
  return out


CHECKS = {"state": check_state,
          "fsdp_step": check_fsdp_step,
          "fsdp_step_unscanned": lambda workdir: check_fsdp_step(workdir, scan=False),
          "state_analytic": lambda workdir: check_state(workdir, compiled=False),
          "remat": check_remat}


def main(argv) -> int:
  names = argv[1].split(",") if len(argv) > 1 else list(CHECKS)
  unknown = set(names) - set(CHECKS)
  if unknown:
    print(f"unknown checks {sorted(unknown)}; valid: {sorted(CHECKS)}", file=sys.stderr)
    return 2
  import tempfile
  results = {}
  with tempfile.TemporaryDirectory(prefix="scale_memory_") as workdir:  # The tokenizer.
    for name in names:
      results[name] = CHECKS[name](workdir)
  print(json.dumps(results), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
