"""What checkpoint checksums cost: save time with and without them, on a real train state.

    python tools/bench_checkpoint.py [--model_preset siglip:B/16] [--saves 3] [--workdir DIR]

Builds the train state of the SigLIP demo config with the preset's model (B/16 two-tower by
default: 203M params, 2.4 GB with AdamW's mu and nu), saves it `--saves` times with the
loop's Checkpointer (synchronously, so the time is the save's own), and times the part of
each save that writes `checksums.json` (bigvl/checkpoint_checksums.py), and a verify as a
restore does it. Prints each save and the median ratio checksum / save-without-checksum,
both measured in this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402  (a tool beside this one)

from bigvl import checkpoint, checkpoint_checksums, state as state_lib  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "configs", "demo", "siglip_digits.py")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model_preset", default="siglip:B/16")
  p.add_argument("--saves", type=int, default=3)
  p.add_argument("--workdir", default=None, help="where to save (default: a temp dir)")
  args = p.parse_args(argv)
  workdir = args.workdir or tempfile.mkdtemp(prefix="bench_checkpoint-")
  config = bench_train.load_config(DEMO, [("batch_size", "8")], model_preset=args.model_preset)
  run = bench_train.build(config, workdir)
  t0 = time.perf_counter()
  with run.context():
    state, _ = run.create_state()
  params = state_lib.param_count(state.params)
  print(f"{args.model_preset}: {params:,} params; state built in {time.perf_counter() - t0:.1f} s",
        flush=True)

  timed = {}
  write = checkpoint_checksums.write

  def timed_write(step_dir):
    t = time.perf_counter()
    out = write(step_dir)
    timed[step_dir] = time.perf_counter() - t
    return out

  checkpoint_checksums.write = timed_write
  ckpt = checkpoint.Checkpointer(workdir, keep=args.saves, async_save=False)
  ratios = []
  for step in range(1, args.saves + 1):
    t = time.perf_counter()
    ckpt.save(step, state, run.config)
    total = time.perf_counter() - t
    step_dir = os.path.join(ckpt.directory, str(step))
    part = timed[step_dir]
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(step_dir) for f in fs)
    t = time.perf_counter()
    assert checkpoint_checksums.verify(step_dir, within="state") is None
    verify = time.perf_counter() - t
    ratios.append(part / (total - part))
    print(f"save {step}: {size / 1e9:.2f} GB, {total:.2f} s in all, checksums {part:.2f} s "
          f"-> ratio to the save without them {ratios[-1]:.3f}; verify {verify:.2f} s",
          flush=True)
  ckpt.close()
  print(f"median ratio checksums / save without checksums: {statistics.median(ratios):.3f} "
        f"over {len(ratios)} saves (spread {min(ratios):.3f}-{max(ratios):.3f})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
