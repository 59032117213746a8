"""Runs the train CLI with a fault injected from outside bigvl (no hook in production code).

    python tests/fault_inject.py --kill_during_save=STEP [train flags ...]

SIGKILLs the process while orbax writes the checkpoint of STEP: right after the save of
that step has started, as soon as its temporary directory exists.
"""

import os
import signal
import sys
import time

from bigvl import checkpoint, storage, train


def _writing(directory: str, step: int) -> bool:
  if not storage.is_remote(directory):
    return any(n.startswith(f"{step}.") or (n.startswith(str(step)) and "tmp" in n)
               for n in os.listdir(directory))
  # In an object store orbax writes `<step>/` in place and marks it complete last.
  inside = storage.listdir(storage.join(directory, str(step)))
  return bool(inside) and "commit_success.txt" not in inside


def kill_once_writing(directory: str, step: int) -> None:
  """Waits until orbax's temporary directory for `step` exists (in an object store: until
  objects of the step are written and its completion marker is not), then dies without
  cleanup."""
  deadline = time.time() + 30
  while time.time() < deadline:
    if _writing(directory, step):
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
