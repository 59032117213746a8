"""Convert an image folder + captions file, or webdataset tars, into bigvl shards.

  python tools/make_dataset.py --out /data/cc3m --split train --webdataset '/raw/cc3m/*.tar'
  python tools/make_dataset.py --out /data/pets --split test \
      --images /raw/pets/images --captions /raw/pets/test.jsonl

Writes `OUT/<split>-00000.array_record`, ... (bigvl records, see bigvl/data/records.py)
and, when the split is complete, `OUT/dataset.json`, which the `shards` source reads.
Every image is decoded once to check it; unreadable ones are skipped, printed, and listed
in `OUT/<split>-skipped.txt`, as are examples without a usable caption in inputs that have
captions (bigvl/data/ingest.py; docs/data.md, "Examples without a caption"). Shard k holds input items [k*S, (k+1)*S) less the skipped.
An interrupted run resumes: running the same command again keeps the finished shards
(recorded in `OUT/.<split>-progress.jsonl`) and continues after them.

With `--engine beam` an Apache Beam pipeline writes the same files, byte for byte, its
workers writing shards in parallel (bigvl/data/make_dataset_beam.py); the arguments
this tool does not know are Beam pipeline options:

  python tools/make_dataset.py --out /data/cc3m --webdataset '/raw/cc3m/*.tar' \
      --engine beam --direct_num_workers 8

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
import tempfile
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


def write_json(path: str, obj) -> None:
  """Writes `obj` as JSON to `path` atomically: an interrupted write leaves the old version."""
  storage.write(path, json.dumps(obj, indent=1))


def shard_name(split: str, k: int) -> str:
  """The file name of shard `k` of `split`."""
  return f"{split}-{k:05d}.array_record"


def example_features(examples) -> list[str]:
  """The sorted feature names `examples` carry (dataset.json's `features`)."""
  found = {"key", "image"}
  for ex in examples:
    if ex["texts"]:
      found.add("texts")
    if ex["label"] >= 0:
      found.add("label")
    if ex.get("meta"):
      found.add("meta")
  return sorted(found)


def image_formats(examples) -> dict[str, int]:
  """How many of `examples` hold each image format, in order of first appearance."""
  out: dict[str, int] = {}
  for ex in examples:
    f = records.sniff_format(ex["image"])
    out[f] = out.get(f, 0) + 1
  return out


def check_item(item, verify: bool):
  """`item` (an example or ingest.Skipped), or Skipped when `verify` and its image fails to
  decode."""
  if isinstance(item, ingest.Skipped) or not verify:
    return item
  reason = verify_image(item["image"])
  return ingest.Skipped(item["key"], reason) if reason else item


def check_chunk(chunk, verify: bool, pool) -> tuple[list[dict], list[ingest.Skipped]]:
  """The examples of `chunk` that are kept and the Skipped ones, each in input order."""
  # PIL releases the GIL while decoding, so threads verify in parallel; map keeps order.
  checked = list(pool.map(lambda it: check_item(it, verify), chunk))
  kept = [it for it in checked if not isinstance(it, ingest.Skipped)]
  dropped = [it for it in checked if isinstance(it, ingest.Skipped)]
  return kept, dropped


def shard_entry(name: str, items: int, kept, dropped) -> dict:
  """What a finished shard records (a progress-file line): file, counts, skipped keys, ..."""
  return {"file": name, "count": len(kept), "items": items,
          "skipped": [list(s) for s in dropped], "features": example_features(kept),
          "image_formats": image_formats(kept)}


def write_records(path: str, examples) -> None:
  """Writes `examples` as the ArrayRecord file `path` (a local path), in order."""
  from array_record.python.array_record_module import ArrayRecordWriter
  writer = ArrayRecordWriter(path, WRITER_OPTIONS)
  try:
    for ex in examples:
      writer.write(records.encode(ex))
  finally:
    writer.close()


def put_shard(path: str, examples, tmp: str) -> None:
  """Writes the shard `path` (local or a URL) so that it exists only once complete: as the
  local file `tmp` renamed to `path`, or for a URL (ArrayRecord writes local files only) as
  a local temporary file uploaded as one object."""
  if storage.is_remote(path):
    with tempfile.TemporaryDirectory(prefix="bigvl-shard-") as local_dir:
      local = os.path.join(local_dir, storage.basename(path))
      write_records(local, examples)
      storage.copy_file(local, path)  # One upload: the object appears whole or not at all.
    return
  try:
    write_records(tmp, examples)
    os.replace(tmp, path)
  finally:
    storage.remove(tmp)


def split_exists(out: str, split: str, meta: dict | None) -> bool:
  """Whether `out` holds split `split`: in its dataset.json `meta`, or as shard files."""
  pattern = re.escape(split) + r"-\d+\.array_record"
  return bool(meta and split in meta.get("splits", {})) or any(
      re.fullmatch(pattern, f) for f in storage.listdir(out))


def config_differences(old: dict, config: dict) -> str:
  """The arguments in which `config` differs from the recorded `old`, for a message."""
  return "; ".join(f"{k}: recorded {old.get(k)!r}, now {config[k]!r}"
                   for k in config if old.get(k) != config[k])


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
    path = storage.join(out, f".{split}-progress.jsonl")
    if not storage.exists(path):
      if split_exists(out, split, meta):
        raise UsageError(f"{out} already has split {split!r} (from another conversion, with "
                         "no progress file). Pick another --out or --split, or delete "
                         f"{storage.join(out, split)}-*.array_record first.")
      journal = cls(path, config, [], False)
      # Written now: a later run with other arguments is refused even if this one crashes.
      journal.rewrite()
      return journal
    lines = storage.read_text(path).splitlines()
    entries = []
    for line in lines:
      try:
        entries.append(json.loads(line))
      except json.JSONDecodeError:
        break  # A line torn by a crash: its shard is written again.
    if not entries or entries[0].get("version") != JOURNAL_VERSION:
      raise UsageError(f"{path} is not a progress file of this bigvl; delete it and "
                       f"{storage.join(out, split)}-*.array_record to start over.")
    old = entries[0].get("config", {})
    if old != config:
      raise UsageError(
          f"{path} records a conversion of split {split!r} with other arguments ("
          + config_differences(old, config) + "). Re-run with the recorded arguments to "
          f"resume it, or delete {path} and {storage.join(out, split)}-*.array_record to start "
          "over.")
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
    # The shard counts as done only once this line is on disk (fsync) or in the store.
    storage.append_text(self.path, json.dumps(entry) + "\n", fsync=True)

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


def merge_metadata(meta: dict | None, split: str, done: list[dict], description: str,
                   class_names) -> dict:
  """dataset.json `meta` (None: a new one) with split `split` made of the shards `done`."""
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


def check_output(reader, out: str, split: str, *, examples_per_shard: int,
                 verify_images: bool) -> tuple[dict | None, dict]:
  """Checks the arguments and `out` (created if missing) before any conversion work.

  Returns `out`'s dataset.json (None when it has none yet) and the conversion's config: what
  a resumed run must repeat (inputs, examples_per_shard, verify_images).
  """
  if not re.fullmatch(r"[A-Za-z0-9_.]+", split):
    raise UsageError(f"--split {split!r}: use letters, digits, '_' and '.' only.")
  if examples_per_shard < 1:
    raise UsageError(f"--examples_per_shard {examples_per_shard}: must be at least 1.")
  if storage.exists(out) and not storage.isdir(out):
    raise UsageError(f"--out {out!r} is a file; pass a directory.")
  storage.makedirs(out)
  meta_path = storage.join(out, shards.METADATA)
  try:
    meta = shards.read_metadata(out) if storage.exists(meta_path) else None
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
  return meta, config


def finish_split(out: str, split: str, done: list[dict], meta: dict | None, reader,
                 log) -> dict:
  """Writes `<split>-skipped.txt` and dataset.json for the finished shards `done` (their
  entries, in shard order); returns the split's entry of dataset.json."""
  skipped = [s for shard in done for s in shard["skipped"]]
  where = storage.join(out, split)
  storage.write(f"{where}-skipped.txt", "".join(f"{key}\t{reason}\n" for key, reason in skipped))
  total = sum(s["count"] for s in done)
  if total == 0:
    raise RuntimeError(f"No examples in split {split!r}: all {sum(s['items'] for s in done)} "
                       f"input items were skipped (see {where}-skipped.txt).")
  meta = merge_metadata(meta, split, done, reader.description, reader.class_names)
  write_json(storage.join(out, shards.METADATA), meta)
  log.write(f"Wrote {total} examples of split {split!r} in {len(done)} shards to "
            f"{out}; skipped {len(skipped)}"
            + (f" (listed in {where}-skipped.txt)" if skipped else "") + ".\n")
  return meta["splits"][split]


def convert(reader, out: str, split: str, *, examples_per_shard: int = 1000,
            verify_images: bool = True, workers: int = 4, log=None,
            stop_after_shards: int | None = None) -> dict:
  """Writes the items of `reader` (an ingest reader) as split `split` of the dataset `out`.

  Returns the split's entry of dataset.json. `stop_after_shards` raises after that many
  shards of this run are written (tests use it to simulate an interruption).
  """
  log = log or sys.stderr
  meta, config = check_output(reader, out, split, examples_per_shard=examples_per_shard,
                              verify_images=verify_images)
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
      kept, dropped = check_chunk(chunk, verify_images, pool)
      for s in dropped:
        progress.message(f"skipped {s.key}: {s.reason}")
      name = shard_name(split, len(journal.shards))
      path = storage.join(out, name)
      # One writer per shard: a fixed temporary name, which a rerun after a kill overwrites.
      put_shard(path, kept, tmp=path + ".tmp")
      journal.add(shard_entry(name, len(chunk), kept, dropped))
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
  return finish_split(out, split, journal.shards, meta, reader, log)


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
                 help="threads that decode images to verify them (per Beam worker with "
                      "--engine beam)")
  p.add_argument("--engine", choices=("local", "beam"), default="local",
                 help="local: this process (default); beam: an Apache Beam pipeline, which "
                      "takes every argument not listed here as a Beam pipeline option "
                      "(--runner, --direct_num_workers, --project, ...)")
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
  """Runs the CLI on `argv` (without the program name); returns the exit status.

  `stop_after_shards` (tests) applies to the local engine only.
  """
  log = log or sys.stderr
  parser = _parser()
  try:
    args, pipeline_args = parser.parse_known_args(argv)
    if args.engine != "beam":
      args = parser.parse_args(argv)  # Unknown arguments are errors, as they always were.
  except SystemExit as e:  # argparse has printed the usage and the problem.
    return EXIT_OK if e.code == 0 else EXIT_USAGE
  if args.engine == "beam":
    from bigvl.data import make_dataset_beam  # Imports Apache Beam only when it runs.
    try:
      make_dataset_beam.require_beam()
    except UsageError as e:
      log.write(f"make_dataset: error: {e}\n")
      return EXIT_USAGE
  try:
    reader = _reader(args)
  except (UsageError, FileNotFoundError, ValueError) as e:  # Inputs missing or not parsable.
    log.write(f"make_dataset: error: {e}\n")
    return EXIT_USAGE
  try:
    if args.engine == "beam":
      make_dataset_beam.convert(reader, args.out, args.split,
                                examples_per_shard=args.examples_per_shard,
                                verify_images=args.verify_images, workers=args.workers,
                                log=log, pipeline_args=pipeline_args)
    else:
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
