"""Collectives, dot FLOPs and losses of the SigLIP demo step per mesh preset and kernel impl.

    # 8 simulated devices: every preset x impl variant (~10 min on 2 cores)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/scale_collectives_check.py mesh
    # 1 device: the reference losses and dot FLOPs of every impl variant
    python tests/scale_collectives_check.py single

For each variant the train step is built and compiled as the loop does (`bigvl.run.build`,
`Run.compile_step`), analysed with `bigvl.compiled_stats` (collectives by kind with loop trip
counts, bytes per device, dot FLOPs per device, memory), then run for STEPS steps on the
demo's real batches from the same initial state: the losses are recorded.

Progress goes to stderr; the last stdout line is one JSON object. Asserts nothing: the test
(tests/test_scale_collectives.py) does, so every number reaches its report.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bigvl import compiled_stats, config_lib, run as run_lib  # noqa: E402

DEMO = os.path.join(ROOT, "configs", "demo", "siglip_digits.py")
STEPS = 5
MESHES = {"dp": ({"data": 8, "fsdp": 1, "tensor": 1}, "dp"),
          "fsdp": ({"data": 1, "fsdp": 8, "tensor": 1}, "fsdp"),
          "fsdp_tp": ({"data": 1, "fsdp": 4, "tensor": 2}, "fsdp_tp")}
# (attention impl, loss impl, chunked). The dense Pallas loss is refused on a split batch.
VARIANTS = [("xla", "xla", False), ("pallas", "xla", False),
            ("xla", "xla", True), ("pallas", "xla", True),
            ("xla", "pallas", True), ("pallas", "pallas", True)]
REFUSED = ("xla", "pallas", False)


def log(*args):
  print(*args, file=sys.stderr, flush=True)


def variant_name(v) -> str:
  return f"attn={v[0]},loss={v[1]},chunked={v[2]}"


def config_for(variant, mesh=None, rules="dp"):
  attn, loss, chunked = variant
  config = config_lib.load_config_file(DEMO)
  with config.unlocked():
    config.total_steps = 100
    config.evals = {}
    config.model.image.attention_impl = attn
    config.model.text.attention_impl = attn
    config.objective.loss_impl = loss
    config.objective.chunked = chunked
    if mesh is not None:
      config.sharding = dict(mesh=mesh, rules=rules)
  return config


def measure(config, workdir, steps=STEPS) -> dict:
  t0 = time.perf_counter()
  run = run_lib.build(config, workdir)
  with run.context():
    state, shardings = run.create_state()
    step, _ = run.compile_step(state, shardings)
  stats = compiled_stats.analyse(step)
  losses = []
  it = run.train_iterator(0)
  for _ in range(steps):
    inputs, info = run.global_batch(next(it))
    state, result = step(state, inputs, info)
    losses.append(float(result.metrics["train/loss"]))
  close = getattr(it, "close", None)
  if close:
    close()
  return dict(stats.as_dict(), losses=losses, mesh=dict(run.mesh.shape),
              seconds=round(time.perf_counter() - t0, 1))


def check_mesh(workdir) -> dict:
  out = {}
  for preset, (mesh, rules) in MESHES.items():
    for v in VARIANTS:
      r = measure(config_for(v, mesh, rules), workdir)
      out[f"{preset}/{variant_name(v)}"] = r
      log(preset, variant_name(v), json.dumps({k: r[k] for k in ("collectives", "dot_flops",
                                                                   "losses", "seconds")}))
    try:
      measure(config_for(REFUSED, mesh, rules), workdir, steps=0)
      out[f"{preset}/refused"] = "not refused"
    except Exception as e:  # The message is what the test checks.
      out[f"{preset}/refused"] = f"{type(e).__name__}: {e}"
    log(preset, "dense pallas loss:", out[f"{preset}/refused"])
  return out


def check_single(workdir) -> dict:
  out = {}
  for v in VARIANTS + [REFUSED]:
    r = measure(config_for(v), workdir)
    out[variant_name(v)] = r
    log("1 device", variant_name(v), json.dumps({k: r[k] for k in ("dot_flops", "losses")}))
  return out


CHECKS = {"mesh": check_mesh, "single": check_single}


def main(argv) -> int:
  names = argv[1].split(",") if len(argv) > 1 else list(CHECKS)
  results = {}
  with tempfile.TemporaryDirectory(prefix="scale_collectives_") as workdir:
    for name in names:
      results[name] = CHECKS[name](workdir)
  print(json.dumps(results), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
