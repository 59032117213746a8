"""The planner's per-device memory prediction against the compiled train step, for
tests/test_plan.py (8 simulated devices, remat barriers kept; see the test for the flags).

For each config: `bigvl.plan.plan` predicts state (from the shardings' shard shapes) + batch +
the temporaries of the step it compiles for its planning config (stand-in data, evals off);
independently, the run is built the way `bigvl.train` builds it (`run.build` with a workdir:
the tokenizer trained and cached there, the evaluators built) and its train step compiled;
its `memory_analysis()` gives argument + output - aliased + temporaries, what one device
holds at the step's peak. The last stdout line is a JSON list of
{config, predicted, compiled, argument, temp, ratio}; this script asserts nothing.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bigvl import compiled_stats, config_lib, plan as plan_lib, run as run_lib  # noqa: E402

# Paper configs at a per-device batch of 8 (two shardings: FSDP over 8, and data parallel).
CONFIGS = [
    ("configs/siglip/b16.py:batch=64", []),
    ("configs/siglip/b16.py:batch=64", [("sharding.rules", "dp"), ("sharding.mesh.fsdp", "1"),
                                        ("sharding.mesh.data", "-1")]),
]


def train_side(config, workdir: str) -> dict:
  """The compiled step's memory as the train loop builds the run (stand-in data)."""
  config = config_lib.ConfigDict(config.to_dict())
  with config.unlocked():
    config.data.train = dict(config.data.stand_in.to_dict(), pp=config.data.train.pp)
    config.data.vocab_size = 64
  run = run_lib.build(config, workdir)
  shapes, shardings = run.abstract_state()
  compiled, _ = run.compile_step(shapes, shardings)
  return compiled_stats.memory_stats(compiled)


def main() -> None:
  assert jax.device_count() == 8, jax.device_count()
  assert compiled_stats.remat_barriers_kept()
  hw = plan_lib.hardware(devices=8, memory_gib=16.0)
  rows = []
  for spec, overrides in CONFIGS:
    config = config_lib.apply_overrides(config_lib.load_config_file(os.path.join(ROOT, spec)),
                                        overrides)
    p = plan_lib.plan(config, hw, spec=spec)
    with tempfile.TemporaryDirectory() as wd:
      mem = train_side(config_lib.with_defaults(config), wd)
    row = dict(config=spec + "".join(f" {k}={v}" for k, v in overrides),
               predicted=p.predicted_bytes, state=p.state_bytes["total"], batch=p.batch_bytes,
               planner_temp=p.temp_bytes, compiled=mem["peak_bytes_estimate"],
               argument=mem["argument_bytes"], temp=mem["temp_bytes"])
    row["ratio"] = row["predicted"] / row["compiled"]
    print(row, file=sys.stderr, flush=True)
    rows.append(row)
  print(json.dumps(rows))


if __name__ == "__main__":
  main()
