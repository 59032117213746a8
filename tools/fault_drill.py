"""The fault drill: inject the faults of docs/reliability.md into short runs of any config and
print which held.

    python tools/fault_drill.py --config configs/demo/siglip_digits.py [--steps 40] [--seed 0] \
        [--root /tmp/drill] [-- --config.batch_size=32 ...]

Every row is a real `python -m bigvl.train` process of the config (shortened: `--steps`
steps, a checkpoint every quarter, no evaluations; extra overrides after `--`) in its own
workdir under `--root`, on this machine's devices. Kill points are wall-clock times drawn
from `--seed`, not steps. A row holds when the run did what docs/reliability.md says: the
resumed params equal an uninterrupted run's bit for bit, a refusal changed no byte of the
workdir, each step is logged once. Exit status 1 if any row failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from bigvl import checkpoint, metrics


def tree_hash(root: str) -> str:
  """A hash of every file's relative path and bytes under `root` (a refusal must change none)."""
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      h.update(os.path.relpath(path, root).encode() + b"\0")
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


class Drill:
  def __init__(self, config: str, steps: int, root: str, extra: list[str]):
    self.config, self.steps, self.root = config, steps, root
    every = max(1, steps // 4)
    self.every = every
    self.args = ["--config", config, f"--config.total_steps={steps}",
                 f"--config.checkpoint_every={every}", "--config.log_every=1",
                 "--config.evals={}", *extra]
    self.rows: list[tuple[str, bool, str]] = []

  def workdir(self, name: str) -> str:
    return os.path.join(self.root, name)

  def start(self, workdir: str, *more: str) -> subprocess.Popen:
    # The output goes to a file beside the workdir: a pipe nobody reads while the drill
    # polls would fill up and stop the run.
    self._logs = getattr(self, "_logs", 0) + 1
    log = open(f"{workdir}.{self._logs}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "bigvl.train", *self.args, "--workdir",
                             workdir, *more], stdout=log, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    proc.log = log
    return proc

  @staticmethod
  def finish(proc: subprocess.Popen) -> str:
    """Waits for `proc`; its output."""
    proc.wait(timeout=3600)
    proc.log.seek(0)
    out = proc.log.read()
    proc.log.close()
    return out

  def run(self, workdir: str, *more: str) -> tuple[int, str]:
    proc = self.start(workdir, *more)
    out = self.finish(proc)
    return proc.returncode, out

  def steps_logged(self, workdir: str) -> list[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
      return []
    return [r["step"] for r in metrics.read_jsonl(path) if "train/loss" in r]

  def same_params(self, workdir: str) -> str | None:
    ours, theirs = checkpoint.load_params(workdir), self.reference
    bad = [k for k in theirs if k not in ours or not np.array_equal(ours[k], theirs[k])]
    return f"{len(bad)} params differ, e.g. {bad[0]}" if bad else None

  def row(self, name: str, held: bool, detail: str) -> None:
    self.rows.append((name, held, detail))
    print(f"[{'held' if held else 'FAILED'}] {name}: {detail}", flush=True)

  # ---------------------------------------------------------------------------- the rows

  def reference_run(self) -> bool:
    workdir = self.workdir("reference")
    proc = self.start(workdir)
    t0 = t1 = None
    while proc.poll() is None:  # How long the steps take: kill points are drawn within it.
      logged = self.steps_logged(workdir)
      now = time.monotonic()
      if logged and t0 is None:
        t0 = now
      if logged and max(logged) >= self.steps and t1 is None:
        t1 = now
      time.sleep(0.02)
    out = self.finish(proc)
    code = proc.returncode
    self.train_s = max((t1 or time.monotonic()) - (t0 or 0.0), 0.5) if t0 else 0.5
    if code != 0:
      self.row("uninterrupted run", False, f"exit {code}: {out[-500:]}")
      return False
    self.reference = checkpoint.load_params(self.workdir("reference"))
    self.row("uninterrupted run", True, f"{self.steps} steps in {self.train_s:.1f} s")
    return True

  def kill9(self, seed: int) -> None:
    workdir = self.workdir(f"kill9-{seed}")
    proc = self.start(workdir)
    while not self.steps_logged(workdir):  # Wait for training to start, then a random time.
      if proc.poll() is not None:
        return self.row(f"kill -9 (seed {seed})", False, "run ended before its first step")
      time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 0.9 * self.train_s))
    proc.send_signal(signal.SIGKILL)
    self.finish(proc)
    killed_at = max(self.steps_logged(workdir), default=0)
    code, out = self.run(workdir)
    problem = f"rerun exit {code}" if code else self.same_params(workdir)
    steps = self.steps_logged(workdir)
    if not problem and steps != list(range(1, self.steps + 1)):
      problem = f"metrics.jsonl steps are not 1..{self.steps} once each"
    self.row(f"kill -9 at a random time (seed {seed})", problem is None,
             problem or f"killed at step {killed_at}, resumed, same params, each step logged once")

  def sigterm(self) -> None:
    workdir = self.workdir("sigterm")
    proc = self.start(workdir)
    while max(self.steps_logged(workdir), default=0) < 2:
      if proc.poll() is not None:
        return self.row("SIGTERM", False, "run ended before step 2")
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = self.finish(proc)
    saved = "SIGTERM: saved checkpoint at step" in out
    self.row("SIGTERM", proc.returncode == 0 and saved,
             "saved the current step and exited 0" if saved else f"exit {proc.returncode}")

  def _damaged(self, name: str, damage) -> None:
    workdir = self.workdir(name)
    shutil.copytree(self.workdir("reference"), workdir)
    newest = checkpoint.Checkpointer(workdir).latest_step()
    damage(os.path.join(workdir, "checkpoints", str(newest)))
    code, out = self.run(workdir)
    problem = f"rerun exit {code}: {out[-300:]}" if code else self.same_params(workdir)
    self.row(name, problem is None, problem or "fell back, same params as uninterrupted")

  def truncated(self) -> None:
    def cut(step_dir):
      files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
               for f in fs]
      biggest = max(files, key=os.path.getsize)
      with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    self._damaged("truncated newest checkpoint", cut)

  def bit_flip(self, seed: int) -> None:
    def flip(step_dir):
      rng = random.Random(seed)
      files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
                     for f in fs if os.path.getsize(os.path.join(r, f)) > 1000)
      victim = rng.choice(files)
      data = bytearray(open(victim, "rb").read())
      data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
      open(victim, "wb").write(bytes(data))
    self._damaged(f"one flipped bit (seed {seed})", flip)

  def data_state(self) -> None:
    def garble(step_dir):
      for name in os.listdir(os.path.join(step_dir, "data")):
        open(os.path.join(step_dir, "data", name), "wb").write(b"{garbage")
    self._damaged("damaged data-iterator state", garble)

  def changed_config(self) -> None:
    workdir = self.workdir("reference")
    before = tree_hash(workdir)
    code, out = self.run(workdir, "--config.seed=12345")
    held = code == 1 and "holds checkpoints of another run" in out and tree_hash(workdir) == before
    self.row("resumed with another config", held,
             "refused, workdir unchanged" if held else f"exit {code}: {out[-300:]}")

  def second_run(self) -> None:
    workdir = self.workdir("lock")
    first = self.start(workdir, f"--config.total_steps={self.steps * 100}")
    while not self.steps_logged(workdir):
      if first.poll() is not None:
        return self.row("two runs on one workdir", False, "first run ended early")
      time.sleep(0.05)
    code, out = self.run(workdir, f"--config.total_steps={self.steps * 100}")
    still = first.poll() is None
    first.send_signal(signal.SIGKILL)
    self.finish(first)
    held = code == 1 and "is in use by another run" in out and still
    self.row("two runs on one workdir", held,
             "the second exited at once, the first went on" if held else f"exit {code}")


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--root", default=None, help="workdirs of the drill (default: a temp dir)")
  args = p.parse_args(argv)
  root = args.root or tempfile.mkdtemp(prefix="bigvl-drill-")
  os.makedirs(root, exist_ok=True)
  drill = Drill(args.config, args.steps, root, extra)
  print(f"fault drill of {args.config} in {root}", flush=True)
  if drill.reference_run():
    for k in range(3):
      drill.kill9(args.seed * 3 + k)
    drill.sigterm()
    drill.truncated()
    drill.bit_flip(args.seed)
    drill.data_state()
    drill.changed_config()
    drill.second_run()
  print("\n| fault | result | detail |\n|---|---|---|")
  for name, held, detail in drill.rows:
    print(f"| {name} | {'held' if held else 'FAILED'} | {detail} |")
  failed = sum(not held for _, held, _ in drill.rows)
  print(f"\n{len(drill.rows) - failed} held, {failed} failed")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
