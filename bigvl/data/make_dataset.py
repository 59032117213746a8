"""Convert an image folder + captions file, or webdataset tars, into bigvl shards.

  python tools/make_dataset.py --out /data/cc3m --split train --webdataset '/raw/cc3m/*.tar'
  python tools/make_dataset.py --out /data/pets --split test \
      --images /raw/pets/images --captions /raw/pets/test.jsonl

Writes `OUT/<split>-00000.array_record`, ... (bigvl records, see bigvl/data/records.py)
and, when the split is complete, `OUT/dataset.json`, which the `shards` source reads.
Every image is decoded once to check it; unreadable ones are skipped, printed, and listed
in `OUT/<split>-skipped.txt`. Shard k holds input items [k*S, (k+1)*S) less the skipped.
An interrupted run resumes: running the same command again keeps the finished shards
(recorded in `OUT/.<split>-progress.jsonl`) and continues after them.

Exit status: 0 done, 1 conversion failed, 2 bad arguments or inputs, 130 interrupted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import itertools
import json
import os
import re
import sys
import time

from bigvl import storage
from bigvl.data import ingest, records, shards

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
JOURNAL_VERSION = 1
WRITER_OPTIONS = "group_size:1"  # One record per chunk: fast random access for grain.


class UsageError(ValueError):
  """Bad arguments or inputs, found before any conversion work."""


class _StopForTest(RuntimeError):
  """Raised by the `stop_after_shards` hook to simulate a crash."""


# ----------------------------------------------------------------------------- progress


class ProgressLine:
  """A progress line on `stream`: redrawn in place on a tty, else printed every `every` s."""

  def __init__(self, stream, total: int | None, start: int = 0, every: float = 5.0):
    self.stream, self.total, self.start = stream, total, start
    self.tty = hasattr(stream, "isatty") and stream.isatty()
    self.every = 0.2 if self.tty else every
    self.t0 = time.monotonic()
    self.last = -float("inf")
    self.done, self.skipped = start, 0

  def _line(self) -> str:
    elapsed = max(time.monotonic() - self.t0, 1e-9)
    rate = (self.done - self.start) / elapsed
    done = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
    parts = [f"{done} items", f"{rate:.1f} items/s"]
    if self.total is not None and rate > 0:
      parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
    parts.append(f"skipped {self.skipped}")
    return ", ".join(parts)

  def update(self, done: int, skipped: int, force: bool = False) -> None:
    self.done, self.skipped = done, skipped
    now = time.monotonic()
    if force or now - self.last >= self.every:
      self.last = now
      if self.tty:
        self.stream.write("\r\x1b[K" + self._line())  # Redrawn over the previous one.
      else:
        self.stream.write(self._line() + "\n")
      self.stream.flush()

  def message(self, text: str) -> None:
    """Prints `text` on its own line, keeping the progress line below it on a tty."""
    self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
    if self.tty:
      self.stream.write(self._line())
    self.stream.flush()

  def close(self) -> None:
    self.update(self.done, self.skipped, force=True)
    if self.tty:
      self.stream.write("\n")
    self.stream.flush()


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


# ----------------------------------------------------------------------------- helpers


def verify_image(data: bytes) -> str | None:
  """None when `data` decodes as an image, else why not."""
  from PIL import Image
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # Truncated data only shows when the pixels are decoded.
  except Exception as e:  # PIL raises many types; any of them means "unusable".
    # Object reprs ("<_io.BytesIO object at 0x...>") would make skipped.txt differ per run.
    msg = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(e)).replace("\n", " ")
    return f"undecodable image: {type(e).__name__}: {msg}"
  return None


def _write_json(path: str, obj) -> None:
  # Atomic: an interrupted write leaves the previous version.
  storage.write(path, json.dumps(obj, indent=1))


def _shard_name(split: str, k: int) -> str:
  return f"{split}-{k:05d}.array_record"


def _features(examples) -> list[str]:
  found = {"key", "image"}
  for ex in examples:
    if ex["texts"]:
      found.add("texts")
    if ex["label"] >= 0:
      found.add("label")
    if ex.get("meta"):
      found.add("meta")
  return sorted(found)


def _formats(examples) -> dict[str, int]:
  out: dict[str, int] = {}
  for ex in examples:
    f = records.sniff_format(ex["image"])
    out[f] = out.get(f, 0) + 1
  return out


def _check(item, verify: bool):
  if isinstance(item, ingest.Skipped) or not verify:
    return item
  reason = verify_image(item["image"])
  return ingest.Skipped(item["key"], reason) if reason else item


def _write_shard(path: str, examples) -> None:
  from array_record.python.array_record_module import ArrayRecordWriter
  # One writer per shard path: a fixed name, so a rerun after a kill overwrites the leftover.
  tmp = path + ".tmp"
  writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
  try:
    for ex in examples:
      writer.write(records.encode(ex))
  finally:
    writer.close()
  os.replace(tmp, path)  # A shard file exists only once it is complete.


# ----------------------------------------------------------------------------- journal


class Journal:
  """What a conversion has finished: `OUT/.<split>-progress.jsonl`, appended once per shard.

  Line 1 holds the arguments; each next line one finished shard (file, count, input items,
  skipped keys, ...); a last `{"complete": true}` marks the end. Appending keeps the cost
  per shard constant however long the conversion runs.
  """

  def __init__(self, path: str, config: dict, shards: list[dict], complete: bool):
    self.path, self.config, self.shards, self.complete = path, config, shards, complete

  @classmethod
  def open(cls, out: str, split: str, config: dict, meta: dict | None, log) -> "Journal":
    """The journal of an earlier run with the same `config`, or a new one."""
    path = os.path.join(out, f".{split}-progress.jsonl")
    if not os.path.exists(path):
      pattern = re.escape(split) + r"-\d+\.array_record"
      if (meta and split in meta.get("splits", {})) or any(
          re.fullmatch(pattern, f) for f in os.listdir(out)):
        raise UsageError(f"{out} already has split {split!r} (from another conversion, with "
                         "no progress file). Pick another --out or --split, or delete "
                         f"{os.path.join(out, split)}-*.array_record first.")
      journal = cls(path, config, [], False)
      # Written now: a later run with other arguments is refused even if this one crashes.
      journal.rewrite()
      return journal
    with open(path) as f:
      lines = f.read().splitlines()
    entries = []
    for line in lines:
      try:
        entries.append(json.loads(line))
      except json.JSONDecodeError:
        break  # A line torn by a crash: its shard is written again.
    if not entries or entries[0].get("version") != JOURNAL_VERSION:
      raise UsageError(f"{path} is not a progress file of this bigvl; delete it and "
                       f"{os.path.join(out, split)}-*.array_record to start over.")
    old = entries[0].get("config", {})
    if old != config:
      diff = [f"{k}: recorded {old.get(k)!r}, now {config[k]!r}"
              for k in config if old.get(k) != config[k]]
      raise UsageError(
          f"{path} records a conversion of split {split!r} with other arguments ("
          + "; ".join(diff) + "). Re-run with the recorded arguments to resume it, or delete "
          f"{path} and {os.path.join(out, split)}-*.array_record to start over.")
    shards = [e for e in entries[1:] if "file" in e]
    journal = cls(path, config, shards, any(e.get("complete") for e in entries[1:]))
    if len(entries) < len(lines):
      journal.rewrite()  # Drop the torn line before appending after it.
    if shards and not journal.complete:
      items = sum(s["items"] for s in shards)
      log.write(f"Resuming split {split!r} in {out}: {len(shards)} shards ({items} input "
                f"items) already written; continuing from item {items}.\n")
    return journal

  def rewrite(self) -> None:
    """Writes the journal anew (atomically) from what this object holds."""
    head = {"version": JOURNAL_VERSION, "config": self.config}
    lines = [json.dumps(e) + "\n" for e in [head, *self.shards]]
    if self.complete:
      lines.append(json.dumps({"complete": True}) + "\n")
    storage.write(self.path, "".join(lines))

  def _append(self, entry: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(entry) + "\n")
      f.flush()
      os.fsync(f.fileno())  # The shard counts as done only once this line is on disk.

  def add(self, entry: dict) -> None:
    self._append(entry)
    self.shards.append(entry)

  def finish(self) -> None:
    if not self.complete:
      self._append({"complete": True})
      self.complete = True

  @property
  def items(self) -> int:
    return sum(s["items"] for s in self.shards)

  @property
  def skipped(self) -> list[list[str]]:
    return [s for shard in self.shards for s in shard["skipped"]]


def _merge_metadata(meta: dict | None, split: str, done: list[dict], description: str,
                    class_names) -> dict:
  meta = dict(meta or {"format": shards.FORMAT, "version": shards.VERSION, "splits": {},
                       "source": {}})
  formats: dict[str, int] = {}
  for s in done:
    for k, v in s["image_formats"].items():
      formats[k] = formats.get(k, 0) + v
  meta["splits"] = dict(meta["splits"], **{split: {
      "count": sum(s["count"] for s in done),
      "shards": [{"file": s["file"], "count": s["count"]} for s in done],
      "skipped": sum(len(s["skipped"]) for s in done),
      "features": sorted(set().union(*(s["features"] for s in done))),
      "image_formats": formats,
  }})
  meta["source"] = dict(meta.get("source") or {}, **{split: description})
  meta["count"] = sum(s["count"] for s in meta["splits"].values())
  meta["features"] = sorted(set().union(*(s["features"] for s in meta["splits"].values())))
  if class_names:
    meta["class_names"] = list(class_names)
  return meta


# ----------------------------------------------------------------------------- convert


def convert(reader, out: str, split: str, *, examples_per_shard: int = 1000,
            verify_images: bool = True, workers: int = 4, log=None,
            stop_after_shards: int | None = None) -> dict:
  """Writes the items of `reader` (an ingest reader) as split `split` of the dataset `out`.

  Returns the split's entry of dataset.json. `stop_after_shards` raises after that many
  shards of this run are written (tests use it to simulate an interruption).
  """
  log = log or sys.stderr
  if not re.fullmatch(r"[A-Za-z0-9_.]+", split):
    raise UsageError(f"--split {split!r}: use letters, digits, '_' and '.' only.")
  if examples_per_shard < 1:
    raise UsageError(f"--examples_per_shard {examples_per_shard}: must be at least 1.")
  if os.path.exists(out) and not os.path.isdir(out):
    raise UsageError(f"--out {out!r} is a file; pass a directory.")
  os.makedirs(out, exist_ok=True)
  meta_path = os.path.join(out, shards.METADATA)
  try:
    meta = shards.read_metadata(out) if os.path.exists(meta_path) else None
  except ValueError as e:
    raise UsageError(f"{e} Pick another --out.") from e
  known = meta.get("class_names") if meta else None
  if reader.class_names and known not in (None, list(reader.class_names)):
    raise UsageError(f"{meta_path} has class_names {known} but these inputs have "
                     f"{list(reader.class_names)}; labels of the splits would disagree. Write "
                     "this split to another --out.")
  if verify_images:
    try:
      import PIL  # noqa: F401
    except ImportError as e:
      raise UsageError("--verify_images needs Pillow: pip install pillow, or pass "
                       "--verify_images=false.") from e
  config = {"inputs": reader.signature(), "examples_per_shard": examples_per_shard,
            "verify_images": verify_images}
  journal = Journal.open(out, split, config, meta, log)
  done_items, skipped_count = journal.items, len(journal.skipped)
  progress = ProgressLine(log, reader.total, start=done_items)
  written_now = 0
  items = iter(()) if journal.complete else reader.items(start=done_items)
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    while True:
      chunk = list(itertools.islice(items, examples_per_shard))
      if not chunk:
        break
      # PIL releases the GIL while decoding, so threads verify in parallel; map keeps order.
      checked = list(pool.map(lambda it: _check(it, verify_images), chunk))
      kept = [it for it in checked if not isinstance(it, ingest.Skipped)]
      dropped = [it for it in checked if isinstance(it, ingest.Skipped)]
      for s in dropped:
        progress.message(f"skipped {s.key}: {s.reason}")
      name = _shard_name(split, len(journal.shards))
      _write_shard(os.path.join(out, name), kept)
      journal.add({"file": name, "count": len(kept), "items": len(chunk),
                   "skipped": [list(s) for s in dropped], "features": _features(kept),
                   "image_formats": _formats(kept)})
      done_items += len(chunk)
      skipped_count += len(dropped)
      progress.update(done_items, skipped_count)
      written_now += 1
      if stop_after_shards is not None and written_now >= stop_after_shards:
        raise _StopForTest(f"stopped after {written_now} shards (stop_after_shards)")
      if len(chunk) < examples_per_shard:
        break
  progress.close()
  journal.finish()
  with open(os.path.join(out, f"{split}-skipped.txt"), "w") as f:
    f.writelines(f"{key}\t{reason}\n" for key, reason in journal.skipped)
  total = sum(s["count"] for s in journal.shards)
  if total == 0:
    raise RuntimeError(f"No examples in split {split!r}: all {done_items} input items were "
                       f"skipped (see {os.path.join(out, split)}-skipped.txt).")
  meta = _merge_metadata(meta, split, journal.shards, reader.description, reader.class_names)
  _write_json(meta_path, meta)
  log.write(f"Wrote {total} examples of split {split!r} in {len(journal.shards)} shards to "
            f"{out}; skipped {skipped_count}"
            + (f" (listed in {os.path.join(out, split)}-skipped.txt)" if skipped_count else "")
            + ".\n")
  return meta["splits"][split]


# ----------------------------------------------------------------------------- CLI


def _bool(text: str) -> bool:
  value = text.strip().lower()
  if value in ("1", "true", "yes", "y", "on"):
    return True
  if value in ("0", "false", "no", "n", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tools/make_dataset.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="output dataset directory")
  p.add_argument("--split", default="train", help="split name (default: train)")
  p.add_argument("--images", help="image folder; with --captions")
  p.add_argument("--captions", help="JSONL or CSV captions file; paths relative to --images")
  p.add_argument("--webdataset", help="tar shards: paths, comma list, glob or directory")
  p.add_argument("--examples_per_shard", type=int, default=1000,
                 help="input items per shard (default: 1000)")
  p.add_argument("--verify_images", type=_bool, nargs="?", const=True, default=True,
                 help="decode every image and skip unreadable ones (default: true)")
  p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                 help="threads that decode images to verify them")
  return p


def _reader(args):
  if args.webdataset and (args.images or args.captions):
    raise UsageError("Pass either --webdataset or --images with --captions, not both.")
  if args.webdataset:
    return ingest.read_webdataset(args.webdataset)
  if not (args.images and args.captions):
    raise UsageError("Pass the inputs: --images DIR --captions FILE, or --webdataset 'GLOB'.")
  return ingest.read_folder(args.images, args.captions)


def main(argv=None, *, stop_after_shards: int | None = None, log=None) -> int:
  """Runs the CLI on `argv` (without the program name); returns the exit status."""
  log = log or sys.stderr
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse has printed the usage and the problem.
    return EXIT_OK if e.code == 0 else EXIT_USAGE
  try:
    reader = _reader(args)
  except (UsageError, FileNotFoundError, ValueError) as e:  # Inputs missing or not parsable.
    log.write(f"make_dataset: error: {e}\n")
    return EXIT_USAGE
  try:
    convert(reader, args.out, args.split, examples_per_shard=args.examples_per_shard,
            verify_images=args.verify_images, workers=args.workers, log=log,
            stop_after_shards=stop_after_shards)
  except _StopForTest:
    raise
  except UsageError as e:
    log.write(f"make_dataset: error: {e}\n")
    return EXIT_USAGE
  except KeyboardInterrupt:
    log.write("\nmake_dataset: interrupted; run the same command again to resume.\n")
    return EXIT_INTERRUPTED
  except (ValueError, RuntimeError, OSError) as e:  # E.g. a truncated tar mid-way.
    log.write(f"make_dataset: error: {e}\n")
    return EXIT_FAILED
  return EXIT_OK
