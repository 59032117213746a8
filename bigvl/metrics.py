"""Metric writers: `metrics.jsonl` (one JSON object per line), TensorBoard event files, and
the progress line."""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time

from bigvl import storage


class JsonlWriter:
  """Appends `{"step": s, name: value, ...}` rows; only the writing process opens the file.

  Locally each row is appended to the file. An object store cannot append: there the
  writer keeps the file's text and uploads it whole (one atomic object write) when a row
  is written and at least `flush_every_s` seconds have passed since the last upload, and
  on `close`; a row logged in the last seconds before a kill may be lost there, never a
  torn row.
  """

  def __init__(self, path: str, enabled: bool = True, flush_every_s: float = 10.0,
               resume_step: int | None = None):
    self.path = path
    self.enabled = enabled
    self.remote = storage.is_remote(path)
    self.flush_every_s = flush_every_s
    self._text, self._dirty, self._last_upload = "", False, -float("inf")
    if enabled:
      storage.makedirs(storage.dirname(path) or ".")
      if storage.exists(path):
        self._text = storage.read_text(path)  # A resumed run goes on after the earlier rows.
        if resume_step is not None:
          self._drop_after(resume_step)
      if not self.remote:
        self._text = ""  # Locally the rows are on disk; only a store's writer keeps them.

  def _drop_after(self, step: int) -> None:
    """Drops the rows of steps after `step` (a run resumed there logs them again, so each
    step has one row) and a line torn by a crash mid-write; rewrites the file atomically."""
    kept = []
    for line in self._text.splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if int(row.get("step", 0)) <= step:
        kept.append(line + "\n")
    text = "".join(kept)
    if text != self._text:
      storage.write(self.path, text)
      self._text = text

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _to_json(v) for k, v in metrics.items()})
    line = json.dumps(row) + "\n"
    if not self.remote:
      storage.append_text(self.path, line)
      return
    self._text += line
    self._dirty = True
    if time.monotonic() - self._last_upload >= self.flush_every_s:
      self.flush()

  def flush(self) -> None:
    """Uploads the rows written so far (on a store; locally they are on disk already)."""
    if self.remote and self._dirty:
      storage.write(self.path, self._text)
      self._dirty, self._last_upload = False, time.monotonic()

  def close(self) -> None:
    if self.enabled:
      self.flush()


class TensorBoardWriter:
  """Scalars as TensorBoard event files under `logdir` (`tensorboard --logdir WORKDIR`).

  Written with the tensorboard package's own event-file writer and protos, so TensorFlow
  is not needed. Only the writing process creates files. In an object store the event
  file is uploaded whole after each write (stores cannot append; see `ObjectEventWriter`).
  """

  def __init__(self, logdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self._writer = None
    if enabled:
      if storage.is_remote(logdir):
        self._writer = ObjectEventWriter(logdir)
      else:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        self._writer = EventFileWriter(logdir)
      if resume_step is not None:
        # TensorBoard's own rule for a restarted run: a SessionLog START at step s makes it
        # discard the earlier files' events at steps >= s, so replayed steps show once.
        from tensorboard.compat.proto import event_pb2
        self._writer.add_event(event_pb2.Event(
            wall_time=time.time(), step=int(resume_step) + 1,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self._writer.flush()

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()]
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))
    self._writer.flush()  # A crash must not lose what was logged.

  def write_images(self, step: int, images: dict) -> None:
    """{tag: uint8 (h, w, 3) array} as PNG image summaries."""
    if not self.enabled or not images:
      return
    import io
    from PIL import Image
    from tensorboard.compat.proto import event_pb2, summary_pb2
    values = []
    for tag, img in images.items():
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format="PNG")
      values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
          height=img.shape[0], width=img.shape[1], colorspace=3,
          encoded_image_string=buf.getvalue())))
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


_EVENT_FILES = itertools.count()


class ObjectEventWriter:
  """A TensorBoard event file in an object store: the records are framed in memory by
  tensorboard's own RecordWriter and the object is uploaded whole at each flush (uploads
  at most every `flush_every_s` seconds, and at close). Same file contents as
  EventFileWriter writes locally; a new file per writer, as EventFileWriter does."""

  def __init__(self, logdir: str, flush_every_s: float = 10.0):
    import io
    import socket
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    # EventFileWriter's name; the counter keeps two writers of one process in one second apart.
    self.path = storage.join(logdir, f"events.out.tfevents.{time.time():010.0f}."
                             f"{socket.gethostname()}.{os.getpid()}.{next(_EVENT_FILES)}")
    self._buffer = io.BytesIO()
    self._records = RecordWriter(self._buffer)
    self.flush_every_s, self._last = flush_every_s, -float("inf")
    self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def add_event(self, event) -> None:
    self._records.write(event.SerializeToString())

  def flush(self, force: bool = False) -> None:
    if force or time.monotonic() - self._last >= self.flush_every_s:
      storage.write(self.path, self._buffer.getvalue())
      self._last = time.monotonic()

  def close(self) -> None:
    self.flush(force=True)


class Writers:
  """Writes every row to all of `writers` (metrics.jsonl and TensorBoard in a run)."""

  def __init__(self, *writers):
    self.writers = writers

  def write(self, step: int, metrics: dict) -> None:
    for w in self.writers:
      w.write(step, metrics)

  def write_images(self, step: int, images: dict) -> None:
    for w in self.writers:
      if hasattr(w, "write_images"):
        w.write_images(step, images)

  def close(self) -> None:
    for w in self.writers:
      if hasattr(w, "close"):
        w.close()


def run_writers(workdir: str, enabled: bool = True, resume_step: int | None = None) -> Writers:
  """`workdir/metrics.jsonl` and TensorBoard events in `workdir/tensorboard/`.

  `resume_step`: the step a run starts from (0 for a new one). The rows an earlier run
  logged after it are dropped from metrics.jsonl and superseded in TensorBoard, so each
  step is logged once however often the run was killed and resumed.
  """
  return Writers(JsonlWriter(storage.join(workdir, "metrics.jsonl"), enabled,
                             resume_step=resume_step),
                 TensorBoardWriter(storage.join(workdir, "tensorboard"), enabled,
                                   resume_step=resume_step))


def _to_json(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)  # JSON has no NaN; keep it readable.


def read_jsonl(path: str) -> list[dict]:
  """The rows of a metrics.jsonl (a path or a URL). A last line torn by a crash or a full
  disk mid-write (no newline, not JSON) is left out; a bad line elsewhere is an error."""
  text = storage.read_text(path)
  lines = [line for line in text.splitlines() if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1 and not text.endswith("\n"):
        break
      raise ValueError(f"{path}: line {i + 1} is not JSON ({e}); the file is damaged") from e
  return rows


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
  """Measures steps/s between calls and prints `step a/b | loss | steps/s | ETA`."""

  def __init__(self, total_steps: int, start_step: int, enabled: bool = True, stream=None):
    self.total = total_steps
    self.enabled = enabled
    self.stream = stream or sys.stdout
    self._last_step, self._last_time = start_step, time.perf_counter()

  def rate(self, step: int) -> float:
    now = time.perf_counter()
    dt, ds = now - self._last_time, step - self._last_step
    self._last_step, self._last_time = step, now
    return ds / dt if dt > 0 else 0.0

  def line(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    sps = metrics.get("train/steps_per_sec", 0.0)
    eta = (self.total - step) / sps if sps > 0 else float("nan")
    parts = [f"step {step}/{self.total}"]
    for k in ("train/loss", "train/lr"):
      if k in metrics:
        parts.append(f"{k.split('/')[-1]} {float(metrics[k]):.4g}")
    parts.append(f"{sps:.2f} steps/s")
    if "train/examples_per_sec" in metrics:
      parts.append(f"{metrics['train/examples_per_sec']:.0f} ex/s")
    if "train/mfu" in metrics:
      parts.append(f"MFU {metrics['train/mfu']:.1%}")
    parts.append(f"ETA {format_duration(eta) if math.isfinite(eta) else '?'}")
    print(" | ".join(parts), file=self.stream, flush=True)
