"""Plans every paper config on the hardware its header names, and prints one markdown table.

    python tools/plan_configs.py [--no_compile] [--only siglip,clip] [--out plans/]

The (config, topology) pairs are the `python -m bigvl.plan --config ... --topology ...`
commands in the configs' own header docstrings, so the table is what a user gets from them.
Each plan runs as its own `python -m bigvl.plan` process (the simulated device count is fixed
per process) with `--json`; compiling a paper-size step for hundreds of simulated devices
takes about a minute on 2 CPU cores, so the whole table takes tens of minutes (progress on
stderr). docs/configs.md has its output.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN = re.compile(r"python -m bigvl\.plan --config (\S+) --topology (\S+)")
GIB = 2 ** 30


def header_plans() -> list[tuple[str, str]]:
  """(config spec, topology) of every plan command in configs/<family>/*.py headers."""
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))):
    if os.sep + "demo" + os.sep in path:
      continue
    out += PLAN.findall(open(path, encoding="utf-8").read())
  return out


def _size(b) -> str:
  return "-" if b is None else f"{b / GIB:.2f}"


def row(spec: str, topology: str, p: dict | None, error: str = "") -> str:
  if p is None:
    return f"| `{spec}` | {topology} | {error} |" + " |" * 7
  hw = p["hardware"]
  collectives = p.get("collectives") or {}
  gathered = sum(v["bytes"] for k, v in collectives.items() if k == "all-gather")
  reduced = sum(v["bytes"] for k, v in collectives.items() if k == "all-reduce")
  fits = {True: "yes", False: "**no**", None: "-"}[p["fits"]]
  days = "-" if p["days"] is None else f"{p['days']:.2f}"
  return (f"| `{spec}` | {topology} ({hw['devices']} x {hw['memory_gib']:g} GiB) | "
          f"{p['params']['total'] / 1e6:.1f}M | {p['model_flops_per_example']:.3g} | "
          f"{p['batch_size']:,} ({p['per_device_batch']}/dev) | {_size(p['state_bytes']['total'])} | "
          f"{_size(p['temp_bytes'])} | {fits} | "
          f"{gathered / 1e9:.2f} / {reduced / 1e9:.2f} | {days} |")


HEADER = ("| config | hardware | params | model FLOPs / example | batch | state GiB/dev | "
          "step temps GiB/dev | fits | all-gather / all-reduce GB/dev/step | days at 40% MFU |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--no_compile", action="store_true", help="No compiled step (fast).")
  ap.add_argument("--only", default="", help="Comma-separated families (configs/<family>/).")
  ap.add_argument("--out", default="", help="Directory for each plan's JSON and log.")
  args = ap.parse_args(argv)
  only = [f for f in args.only.split(",") if f]
  out_dir = args.out or os.path.join(ROOT, "workdirs", "plans")
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  for spec, topology in header_plans():
    if only and spec.split("/")[1] not in only:
      continue
    name = re.sub(r"[^\w.-]+", "_", f"{spec}_{topology}")
    js = os.path.join(out_dir, name + ".json")
    cmd = [sys.executable, "-m", "bigvl.plan", "--config", spec, "--topology", topology,
           "--json", js] + (["--no_compile"] if args.no_compile else [])
    t0 = time.time()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    with open(os.path.join(out_dir, name + ".log"), "w") as f:
      f.write(proc.stdout + proc.stderr)
    print(f"{spec} on {topology}: exit {proc.returncode} in {time.time() - t0:.0f} s",
          file=sys.stderr, flush=True)
    if proc.returncode in (0, 1) and os.path.exists(js):
      rows.append(row(spec, topology, json.load(open(js))))
    else:
      last = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
      rows.append(row(spec, topology, None, f"error: {last}"))
  print(HEADER)
  print("\n".join(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
