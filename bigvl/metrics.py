"""Metric writers: `metrics.jsonl` (one JSON object per line), TensorBoard event files, and
the progress line."""

from __future__ import annotations

import json
import math
import os
import sys
import time


class JsonlWriter:
  """Appends `{"step": s, name: value, ...}` rows; only the writing process opens the file."""

  def __init__(self, path: str, enabled: bool = True):
    self.path = path
    self.enabled = enabled
    if enabled:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _to_json(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


class TensorBoardWriter:
  """Scalars as TensorBoard event files under `logdir` (`tensorboard --logdir WORKDIR`).

  Written with the tensorboard package's own event-file writer and protos, so TensorFlow
  is not needed. Only the writing process creates files.
  """

  def __init__(self, logdir: str, enabled: bool = True):
    self.enabled = enabled
    self._writer = None
    if enabled:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      self._writer = EventFileWriter(logdir)

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


def run_writers(workdir: str, enabled: bool = True) -> Writers:
  """`workdir/metrics.jsonl` and TensorBoard events in `workdir/tensorboard/`."""
  return Writers(JsonlWriter(os.path.join(workdir, "metrics.jsonl"), enabled),
                 TensorBoardWriter(os.path.join(workdir, "tensorboard"), enabled))


def _to_json(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)  # JSON has no NaN; keep it readable.


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
