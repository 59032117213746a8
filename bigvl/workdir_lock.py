"""One run per workdir: a lock file `workdir/.lock`, held by process 0 of the run.

Two copies of one command on one workdir would both write its checkpoints and metrics.
The first takes the lock; a second exits at once with a message naming the holder. The
holder rewrites the lock's heartbeat every `HEARTBEAT_S` seconds and removes the lock on
exit. A lock left by a run that died (kill -9, a lost host) never blocks a rerun: it is
taken over when its process is gone (same host) or its heartbeat is older than `STALE_S`
(any host).

Locally the lock is created with O_CREAT|O_EXCL, so of two runs starting at once exactly one
gets it. In an object store (no create-if-absent through its file API) the lock is read,
then written: two runs starting within the same second could both take it; the heartbeat
check then makes the later one exit at its next beat (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from bigvl import storage

LOCK = ".lock"
HEARTBEAT_S = 30.0
STALE_S = 120.0


class LockedError(RuntimeError):
  """The workdir is held by another live run; the message names it."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's live process.
    return True
  return True


def _read(path: str) -> dict | None:
  try:
    return json.loads(storage.read_text(path))
  except FileNotFoundError:
    return None
  except (ValueError, UnicodeDecodeError):
    return {}  # Torn or garbage: nobody can hold it.


def stale_reason(holder: dict, now: float | None = None) -> str | None:
  """Why the lock `holder` describes belongs to no live run, or None if it may."""
  now = time.time() if now is None else now
  if not holder:
    return "unreadable lock file"
  if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
    return f"process {holder.get('pid')} on this host is gone"
  age = now - float(holder.get("heartbeat", 0))
  if age > STALE_S:
    return f"its heartbeat is {age:.0f} s old (over {STALE_S:.0f} s)"
  return None


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir's lock for the block (LockedError if a
  live run holds it). `enabled=False` (processes other than 0) does nothing."""

  def __init__(self, workdir: str, enabled: bool = True, log=print):
    self.path = storage.join(workdir, LOCK)
    self.enabled, self.log = enabled, log
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None
    self.started = time.time()

  def _record(self) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                       "started": self.started, "heartbeat": time.time()})

  def _create(self) -> bool:
    """Creates the lock if absent; False if it exists. OSError (a read-only or full
    workdir) propagates: the caller reports it."""
    if storage.is_remote(self.path):
      if storage.exists(self.path):
        return False
      storage.write(self.path, self._record())
      return True
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._record())
    return True

  def acquire(self) -> None:
    for _ in range(3):  # A holder may release between our look and our try.
      if self._create():
        break
      holder = _read(self.path)
      if holder is None:
        continue
      reason = stale_reason(holder)
      if reason is None:
        age = time.time() - float(holder.get("heartbeat", 0))
        raise LockedError(
            f"--workdir {storage.dirname(self.path)} is in use by another run: host "
            f"{holder.get('host')}, pid {holder.get('pid')}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))}, "
            f"last heartbeat {age:.0f} s ago. Wait for it to end or stop it, or use another "
            f"--workdir (a lock of a run that died is taken over once its process is gone "
            f"or its heartbeat is {STALE_S:.0f} s old).")
      self.log(f"Taking over the lock of a run that is not running ({reason}): {self.path}")
      storage.remove(self.path)
    else:
      raise LockedError(f"Could not take the lock {self.path}: other runs keep taking it.")
    self._thread = threading.Thread(target=self._beat, daemon=True, name="bigvl-lock")
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      holder = _read(self.path)
      if holder and holder.get("token") != self.token:
        self.log(f"WARNING: {self.path} was taken by another run (host {holder.get('host')}, "
                 f"pid {holder.get('pid')}); this run keeps going but two runs now share "
                 "the workdir.")
        return
      try:
        storage.write(self.path, self._record())
      except OSError:  # A full or read-only disk: the save path reports it.
        pass

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    holder = _read(self.path)
    if holder and holder.get("token") == self.token:
      storage.remove(self.path)

  def __enter__(self):
    if self.enabled:
      self.acquire()
    return self

  def __exit__(self, *exc):
    if self.enabled:
      self.release()
