"""Runs the train CLI with a fault injected from outside bigvl (no hook in production code).

    python tests/fault_inject.py --kill_during_save=STEP [train flags ...]

SIGKILLs the process while orbax writes the checkpoint of STEP: right after the save of
that step has started, as soon as its temporary directory exists.
"""

import os
import signal
import sys
import time

from bigvl import checkpoint, train


def kill_once_writing(directory: str, step: int) -> None:
  """Waits until orbax's temporary directory for `step` exists, then dies without cleanup."""
  deadline = time.time() + 30
  while time.time() < deadline:
    if any(n.startswith(f"{step}.") or (n.startswith(str(step)) and "tmp" in n)
           for n in os.listdir(directory)):
      os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.001)
  raise RuntimeError(f"fault_inject: no temporary directory of step {step} in {directory}.")


def main() -> None:
  flag = [a for a in sys.argv[1:] if a.startswith("--kill_during_save=")]
  if not flag:
    sys.exit("usage: fault_inject.py --kill_during_save=STEP [train flags]")
  kill_step = int(flag[0].split("=", 1)[1])
  save = checkpoint.Checkpointer.save

  def save_then_die(self, step, *args, **kwargs):
    save(self, step, *args, **kwargs)
    if step == kill_step:
      kill_once_writing(self.directory, step)

  checkpoint.Checkpointer.save = save_then_die
  sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a not in flag]
  train.run()


if __name__ == "__main__":
  main()
