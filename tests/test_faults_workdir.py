"""Faults of the workdir itself (issue 18): two runs on one workdir (item 4), a read-only or
full checkpoint directory (item 5), a workdir that is a file (item 8)."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from bigvl import metrics, workdir_lock
from conftest import DEMO_SIGLIP, run_bigvl
from test_reliability import FAST, logged_steps, popen_train

ARGS = ["--config", DEMO_SIGLIP, *FAST]


@pytest.mark.unit
@pytest.mark.faults
def test_stale_lock_rules(tmp_path):
  now = time.time()
  me = socket.gethostname()
  assert workdir_lock.stale_reason({}, now) == "unreadable lock file"
  assert workdir_lock.stale_reason({"host": me, "pid": os.getpid(), "heartbeat": now}) is None
  dead = subprocess.Popen(["true"])
  dead.wait()
  assert "is gone" in workdir_lock.stale_reason({"host": me, "pid": dead.pid, "heartbeat": now})
  other = {"host": "elsewhere", "pid": 1, "heartbeat": now - 10}
  assert workdir_lock.stale_reason(other, now) is None
  other["heartbeat"] = now - workdir_lock.STALE_S - 1
  assert "heartbeat" in workdir_lock.stale_reason(other, now)
  # Held: a second holder is refused with the first one's pid; released, it is free again.
  first = workdir_lock.WorkdirLock(str(tmp_path))
  first.acquire()
  with pytest.raises(workdir_lock.LockedError, match=f"pid {os.getpid()}"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  first.release()
  assert not (tmp_path / ".lock").exists()
  second = workdir_lock.WorkdirLock(str(tmp_path))
  second.acquire()
  second.release()


@pytest.mark.integration
@pytest.mark.faults
@pytest.mark.slow
def test_a_second_run_on_a_workdir_exits_at_once_and_a_killed_runs_lock_is_taken_over(tmp_path):
  workdir = tmp_path / "run"
  first = popen_train(workdir, "--config.total_steps=5000", *FAST)
  deadline = time.time() + 300
  while max(logged_steps(workdir), default=0) < 12:  # Checkpoint 10 is written.
    assert first.poll() is None, first.stdout.read()
    assert time.time() < deadline
    time.sleep(0.05)
  t0 = time.time()
  second = run_bigvl([*ARGS, "--workdir", str(workdir), "--config.total_steps=5000"])
  assert second.returncode == 1, second.stdout + second.stderr
  assert "is in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
  assert time.time() - t0 < 60
  assert first.poll() is None  # The first run goes on.
  first.send_signal(signal.SIGKILL)
  first.communicate(timeout=60)
  assert (workdir / ".lock").exists()  # Left behind by the kill.
  steps = logged_steps(workdir)
  assert len(steps) == len(set(steps)), "the second run wrote rows"
  # total_steps differs from the killed run's config: allowed explicitly, so it resumes.
  third = run_bigvl([*ARGS, "--workdir", str(workdir), "--config.total_steps=30",
                     "--config.allow_changes=total_steps"])
  assert third.returncode == 0, third.stdout + third.stderr
  assert "Taking over the lock of a run that is not running" in third.stdout
  assert "Resumed from checkpoint step" in third.stdout
  assert not (workdir / ".lock").exists()


@contextlib.contextmanager
def _tmpfs(path, size="64M", readonly=False):
  path.mkdir(parents=True, exist_ok=True)
  opts = f"size={size}" + (",ro" if readonly else "")
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                        capture_output=True, text=True)
  if proc.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.integration
@pytest.mark.faults
def test_a_read_only_workdir_fails_before_compiling_with_the_cause(tmp_path):
  with _tmpfs(tmp_path / "ro", readonly=True) as ro:
    t0 = time.time()
    proc = run_bigvl([*ARGS, "--workdir", str(ro / "run"), "--config.total_steps=20"])
  assert proc.returncode == 1, proc.stdout + proc.stderr
  error = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1 and "is not writable" in error[0] and "Read-only file system" in error[0]
  assert "compiled" not in proc.stdout and "Traceback" not in proc.stderr
  assert time.time() - t0 < 60


@pytest.mark.integration
@pytest.mark.faults
@pytest.mark.slow
def test_a_full_disk_stops_the_run_at_the_step_after_the_failed_save(tmp_path):
  # Room for the logs and two checkpoints of the demo (about 3.5 MB each), not a third.
  with _tmpfs(tmp_path / "small", size="10M") as small:
    workdir = small / "run"
    t0 = time.time()
    proc = run_bigvl([*ARGS, "--workdir", str(workdir), "--config.total_steps=300",
                      "--config.checkpoint_every=50", "--config.keep_checkpoints=100"])
    elapsed = time.time() - t0
    rows = metrics.read_jsonl(str(workdir / "metrics.jsonl")) if (workdir / "metrics.jsonl").exists() else []
  assert proc.returncode == 1, proc.stdout + proc.stderr
  error = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1, proc.stderr
  assert "No space left on device" in error[0], error
  failed, good = map(int, re.search(r"A checkpoint save of step (\d+) failed .* last good "
                                    r"checkpoint is step (\d+)", error[0]).groups())
  assert good % 50 == 0 and failed == good + 50, error[0]
  # The run stops at the first step after the failed write ends (asynchronous: a write that
  # fails takes a few steps of this demo), long before the next save. Before the poll joined
  # orbax's finished save threads, it stopped only at the next save (failed + 50).
  last_row = max(r["step"] for r in rows)  # The step that raised is not logged.
  assert failed <= last_row < failed + 25, (failed, last_row)
  assert elapsed < 300


@pytest.mark.integration
@pytest.mark.faults
def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  proc = run_bigvl([*ARGS, "--workdir", str(path), "--config.total_steps=5"])
  assert proc.returncode == 1
  error = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1 and "is a file, not a directory" in error[0], proc.stderr
  assert path.read_text() == "x"
