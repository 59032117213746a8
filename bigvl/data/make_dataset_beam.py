"""The Apache Beam engine of tools/make_dataset.py (`--engine beam`).

It writes what the single-machine conversion (bigvl/data/make_dataset.py) writes, byte for
byte: the shards `OUT/<split>-00000.array_record`, ... (shard k holds input items
[k*S, (k+1)*S) of the inputs' item stream, less the skipped), `OUT/<split>-skipped.txt` and
`OUT/dataset.json`. Only the shards are written in parallel, each by one worker:

  webdataset: one element per tar -> its key groups counted (tar headers only, the data is
    seeked over) -> all counts -> the shard plan: which groups of which tars make shard k
    (a shard may span two tars) -> one element per shard -> its worker reads exactly its
    groups, passing earlier members over without reading them, and writes the shard.
  folder: the captions file's rows split into groups of S -> one element per shard -> ditto.

This process (the driver) then writes `<split>-skipped.txt` and dataset.json with the
functions the single-machine path uses.

Resume: `OUT/.<split>-beam/` holds the conversion's arguments (`config.json`, checked as the
single-machine progress file is: a rerun with other arguments is refused), every tar's
key-group count (`counts.json`), and one record per finished shard (`<split>-00003.json`,
written atomically once the shard file is in place). Running the same command again skips
the shards that have both.

Every file operation goes through bigvl.storage, so `--out` and the tars may be
object-store URLs: a shard is written to a local temporary file, then uploaded whole
(locally it is renamed into place). Folder inputs (the captions file, the images) are local
paths (bigvl.data.ingest).

Runner: the DirectRunner unless `--runner` says otherwise, in `multi_processing` mode with
one worker process per core by default (DIRECT_DEFAULTS); any Beam runner that can run
Python (Dataflow, Flink, Spark) runs the same pipeline.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import io
import itertools
import json
import logging
import os
import re
import sys
import tarfile
import threading
import time
import uuid
from typing import Iterator, Sequence

from bigvl import storage
from bigvl.data import ingest, make_dataset

STATE_VERSION = 1
CONFIG = "config.json"
COUNTS = "counts.json"
NEEDS_BEAM = "--engine beam needs Apache Beam: pip install 'bigvl[beam]'"
# Defaults for the DirectRunner, each unless the command line sets it: worker processes
# (0: one per core), and their logging at WARNING (at INFO every worker prints its setup).
DIRECT_DEFAULTS = (("--direct_running_mode", "multi_processing"),
                   ("--direct_num_workers", "0"),
                   ("--default_sdk_harness_log_level", "WARNING"))
_log = logging.getLogger(__name__)


def require_beam() -> None:
  """UsageError (one line) when Apache Beam is not installed."""
  try:
    import apache_beam  # noqa: F401
  except ImportError as e:
    raise make_dataset.UsageError(NEEDS_BEAM) from e


def state_dir(out: str, split: str) -> str:
  """Where a Beam conversion of `split` records its arguments and finished shards."""
  return storage.join(out, f".{split}-beam")


def done_name(split: str, k: int) -> str:
  """The file name of shard k's finished-record in the state directory."""
  return f"{split}-{k:05d}.json"


@dataclasses.dataclass(frozen=True)
class Job:
  """What every worker needs to know: inputs, output and the conversion's arguments."""
  out: str
  split: str
  examples_per_shard: int
  verify_images: bool
  workers: int  # Threads verifying images, per worker.
  tars: tuple[str, ...] = ()  # Webdataset inputs, in the reader's order.
  captioned: bool = False  # The tars have captions (ingest.has_captions): read by the driver.
  images: str | None = None  # Folder inputs.
  captions: str | None = None
  pause_s: float = 0.0  # Tests: how long a worker waits after each shard it writes.

  @property
  def state(self) -> str:
    return state_dir(self.out, self.split)


def job_of(reader, out: str, split: str, *, examples_per_shard: int, verify_images: bool,
           workers: int, pause_s: float = 0.0) -> Job:
  """The Job converting the inputs of `reader` (an ingest reader)."""
  common = dict(out=storage.abspath(out), split=split, examples_per_shard=examples_per_shard,
                verify_images=verify_images, workers=max(1, workers), pause_s=pause_s)
  if isinstance(reader, ingest.WebDatasetReader):
    return Job(tars=tuple(storage.abspath(p) for p in reader.paths), captioned=reader.captioned,
               **common)
  if isinstance(reader, ingest.FolderReader):
    return Job(images=storage.abspath(reader.images_dir),
               captions=storage.abspath(reader.captions_file), **common)
  raise TypeError(f"--engine beam converts webdataset or folder inputs, not {reader!r}")


# ----------------------------------------------------------------------------- plan


def plan_shards(job: Job, counts: Sequence[int]) -> list[dict]:
  """Every shard of the conversion: its index, file, and input items [start, stop).

  `counts` holds the key groups of each of `job.tars` (for a folder: [rows]). A webdataset
  shard also lists the groups of each tar it takes, `tars`: [[path, first, end], ...].
  """
  size, total = job.examples_per_shard, sum(counts)
  offsets = list(itertools.accumulate(counts, initial=0))
  plan = []
  for k in range(-(-total // size)):
    lo, hi = k * size, min((k + 1) * size, total)
    spec = {"index": k, "file": make_dataset.shard_name(job.split, k), "start": lo, "stop": hi}
    if job.tars:
      spec["tars"] = [[path, max(lo, a) - a, min(hi, a + n) - a]
                      for path, a, n in zip(job.tars, offsets, counts) if a < hi and a + n > lo]
    plan.append(spec)
  return plan


def read_counts(job: Job) -> list[int] | None:
  """The key-group counts of `job.tars` an earlier run recorded, or None."""
  path = storage.join(job.state, COUNTS)
  if not storage.exists(path):
    return None
  try:
    tars = json.loads(storage.read_text(path))["tars"]
  except (ValueError, KeyError, TypeError):
    return None  # Not one this module wrote: counted again.
  if [t[0] for t in tars] != list(job.tars):
    return None
  return [int(t[1]) for t in tars]


def _plan_from_counts(counted: list, job: Job) -> list[dict]:
  counts = [n for _, n in sorted(counted)]
  storage.write(storage.join(job.state, COUNTS),
                json.dumps({"tars": [[p, n] for p, n in zip(job.tars, counts)]}))
  return plan_shards(job, counts)


# ----------------------------------------------------------------------------- tars


def _bad_tar(path: str, e: Exception) -> ValueError:
  return ValueError(f"Cannot read webdataset tar {path!r}: {e}. It is truncated or not a tar; "
                    "re-download it or leave it out of --webdataset.")


def _open_tar(f, path: str) -> tarfile.TarFile:
  try:
    return tarfile.open(fileobj=f, mode="r:*")  # Seekable: headers read, data seeked over.
  except tarfile.TarError as e:
    raise _bad_tar(path, e) from e


def count_groups(path: str) -> int:
  """How many key groups (examples or skipped items) the tar `path` holds; reads headers only."""
  n, key = 0, None
  with storage.open_file(path, "rb") as f:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    tar = _open_tar(f, path)
    plain = tar.fileobj is f  # Uncompressed: member offsets are offsets in the file.
    try:
      for m in tar:
        if plain and m.offset_data + m.size > size:
          raise tarfile.ReadError(f"unexpected end of data in member {m.name!r}")
        if not m.isfile():
          continue
        k, _ = ingest.split_member_name(m.name)
        if k != key:
          n, key = n + 1, k
    except tarfile.TarError as e:
      raise _bad_tar(path, e) from e
  return n


def tar_groups(path: str, start: int, stop: int,
               captioned: bool = False) -> Iterator[dict | ingest.Skipped]:
  """Key groups [start, stop) of the tar `path`, as ingest's webdataset reader yields them
  (`captioned`: whether the whole webdataset has captions, see ingest.group_example).

  The members of earlier groups are passed over without being read; reading ends at `stop`.
  """
  with storage.open_file(path, "rb") as f:
    tar = _open_tar(f, path)
    index, key, files = 0, None, {}
    try:
      for m in tar:
        if not m.isfile():
          continue
        k, ext = ingest.split_member_name(m.name)
        if k != key:
          if key is not None:
            if index >= start:
              yield ingest.group_example(key, files, captioned)
            index += 1
            if index >= stop:
              return
          key, files = k, {}
        if index >= start and ext:
          files[ext] = tar.extractfile(m).read()
    except tarfile.TarError as e:
      raise _bad_tar(path, e) from e
    if key is not None and start <= index < stop:
      yield ingest.group_example(key, files, captioned)


# ----------------------------------------------------------------------------- workers


@functools.lru_cache(maxsize=4)
def _folder_reader(images: str, captions: str) -> ingest.FolderReader:
  return ingest.read_folder(images, captions)  # Parsed once per worker process.


def shard_items(job: Job, spec: dict) -> Iterator[dict | ingest.Skipped]:
  """The input items of shard `spec`, in order."""
  if job.tars:
    for path, first, end in spec["tars"]:
      yield from tar_groups(path, first, end, job.captioned)
  else:
    reader = _folder_reader(job.images, job.captions)
    yield from itertools.islice(reader.items(start=spec["start"]), spec["stop"] - spec["start"])


def _put_shard(job: Job, name: str, examples: list[dict]) -> None:
  """Writes shard `name` whole. A local temporary file lies beside it, out of sight in the
  state directory, and is named per writer: a runner may run one shard twice at once."""
  tmp = storage.join(job.state, f"{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  make_dataset.put_shard(storage.join(job.out, name), examples, tmp=tmp)


def write_shard(spec: dict, job: Job) -> dict:
  """Writes the shard `spec` unless an earlier run finished it; returns its record."""
  name = spec["file"]
  done = storage.join(job.state, done_name(job.split, spec["index"]))
  if storage.exists(done) and storage.exists(storage.join(job.out, name)):
    return json.loads(storage.read_text(done))  # Finished before: not written again.
  chunk = list(shard_items(job, spec))
  if len(chunk) != spec["stop"] - spec["start"]:
    raise RuntimeError(f"{name} should hold input items {spec['start']}..{spec['stop'] - 1} "
                       f"but the inputs gave {len(chunk)}; did they change while converting?")
  with concurrent.futures.ThreadPoolExecutor(job.workers) as pool:
    kept, dropped = make_dataset.check_chunk(chunk, job.verify_images, pool)
  _put_shard(job, name, kept)
  entry = make_dataset.shard_entry(name, len(chunk), kept, dropped)
  storage.write(done, json.dumps(entry))  # The shard counts as finished from here on.
  _log.info("Wrote %s: %d examples, %d skipped.", name, len(kept), len(dropped))
  if job.pause_s:
    time.sleep(job.pause_s)
  return entry


def _count_tar(i: int, path: str) -> tuple[int, int]:
  return i, count_groups(path)


# ----------------------------------------------------------------------------- driver


def _open_state(job: Job, config: dict, meta: dict | None) -> None:
  """Checks that `job` may write its split (new, or a resume with the same arguments)."""
  out, split, state = job.out, job.split, job.state
  where = storage.join(out, split)
  restart = f"delete {state} and {where}-*.array_record to start over"
  progress = storage.join(out, f".{split}-progress.jsonl")
  if storage.exists(progress):
    raise make_dataset.UsageError(
        f"{out} has a single-machine conversion of split {split!r} ({progress}); run it "
        f"again without --engine beam, or delete {progress} and {where}-*.array_record to "
        "start over with --engine beam.")
  path = storage.join(state, CONFIG)
  if storage.exists(path):
    try:
      recorded = json.loads(storage.read_text(path))
    except ValueError:
      recorded = None
    if not isinstance(recorded, dict) or recorded.get("version") != STATE_VERSION:
      raise make_dataset.UsageError(f"{path} is not a Beam conversion record of this bigvl; "
                                    f"{restart}.")
    old = recorded.get("config") or {}
    if old != config:
      raise make_dataset.UsageError(
          f"{path} records a conversion of split {split!r} with other arguments ("
          + make_dataset.config_differences(old, config) + "). Re-run with the recorded "
          f"arguments to resume it, or {restart}.")
    return
  if make_dataset.split_exists(out, split, meta):
    raise make_dataset.UsageError(
        f"{out} already has split {split!r} (from another conversion, with no Beam record "
        f"{state}). Pick another --out or --split, or delete {where}-*.array_record first.")
  storage.makedirs(state)
  # Written now: a later run with other arguments is refused even if this one is killed.
  storage.write(path, json.dumps({"version": STATE_VERSION, "config": config}, indent=1))


def _recorded(job: Job) -> set[int]:
  """The shards with a finished-record in the state directory."""
  pattern = re.escape(job.split) + r"-(\d+)\.json"
  return {int(m.group(1)) for m in (re.fullmatch(pattern, n) for n in storage.listdir(job.state))
          if m}


def finished_shards(job: Job) -> set[int]:
  """The shards an earlier run finished: recorded, and their file in place."""
  files = set(storage.listdir(job.out))
  return {k for k in _recorded(job) if make_dataset.shard_name(job.split, k) in files}


class _ShardProgress:
  """Logs a line per finished shard (done / total) while the pipeline runs, by polling the
  state directory: workers on other machines report nothing else to this process."""

  def __init__(self, job: Job, log, total: int | None, seen: set[int]):
    self.job, self.log, self.total, self.seen = job, log, total, set(seen)
    self.every = 5.0 if storage.is_remote(job.out) else 0.5
    self.stopped = threading.Event()
    self.lock = threading.Lock()
    self.thread = threading.Thread(target=self._loop, daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.stopped.set()
    self.thread.join()
    if exc[0] is None:
      self.poll()

  def _loop(self):
    while not self.stopped.wait(self.every):
      try:
        self.poll()
      except Exception as e:  # E.g. a store briefly unreachable: polled again later.
        _log.debug("progress poll failed: %s", e)

  def poll(self) -> None:
    with self.lock:
      if self.total is None and self.job.tars:
        counts = read_counts(self.job)
        if counts is not None:
          self.total = len(plan_shards(self.job, counts))
      for k in sorted(_recorded(self.job) - self.seen):
        entry = json.loads(storage.read_text(
            storage.join(self.job.state, done_name(self.job.split, k))))
        for key, reason in entry["skipped"]:
          self.log.write(f"skipped {key}: {reason}\n")
        self.seen.add(k)
        total = "?" if self.total is None else self.total
        self.log.write(f"{entry['file']} written: {len(self.seen)}/{total} shards done "
                       f"({entry['count']} examples, {len(entry['skipped'])} skipped)\n")
      self.log.flush()


def _given(args: Sequence[str], flag: str) -> bool:
  return any(a == flag or a.startswith(flag + "=") for a in args)


def pipeline_options(pipeline_args: Sequence[str] = ()):
  """Beam PipelineOptions of `pipeline_args`; on the DirectRunner (the default runner) with
  DIRECT_DEFAULTS for the flags they leave out.

  UsageError (one line) for an argument that is no Beam option, or a bad value: Beam itself
  would ignore the first with a warning (a mistyped --examples_per_shard would convert with
  the default) and exit from inside its parser on the second.
  """
  from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
  args = list(pipeline_args)
  parsers, err = [], io.StringIO()
  try:
    with contextlib.redirect_stderr(err):  # argparse's usage: hundreds of Beam options.
      PipelineOptions(args).get_all_options(add_extra_args_fn=parsers.append)
      unknown = parsers[0].parse_known_args(args)[1]
  except SystemExit:
    why = [ln.split(": error: ", 1)[1] for ln in err.getvalue().splitlines() if ": error: " in ln]
    raise make_dataset.UsageError(
        f"bad Beam pipeline option: {why[-1] if why else err.getvalue().strip()[-300:]}") from None
  if unknown:
    raise make_dataset.UsageError(
        f"unrecognized arguments: {' '.join(unknown)} (neither tools/make_dataset.py's nor Beam "
        "pipeline options)")
  runner = PipelineOptions(args).view_as(StandardOptions).runner
  if runner is None or "direct" in str(runner).lower():
    args += [f"{flag}={value}" for flag, value in DIRECT_DEFAULTS if not _given(args, flag)]
  return PipelineOptions(args)


@contextlib.contextmanager
def _importable_by_workers():
  """Puts bigvl's root on PYTHONPATH while the pipeline runs: DirectRunner worker
  processes then import bigvl from a checkout that is not installed, as tools/ does."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  old = os.environ.get("PYTHONPATH")
  os.environ["PYTHONPATH"] = os.pathsep.join([root] + ([old] if old else []))
  try:
    yield
  finally:
    if old is None:
      os.environ.pop("PYTHONPATH", None)
    else:
      os.environ["PYTHONPATH"] = old


def _failure(e: Exception) -> str:
  """The cause of a failed pipeline, in one line: the last `SomeError: message` line of the
  worker traceback Beam's exception carries, else its first line."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  causes = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): \S", ln)]
  return (causes[-1] if causes else lines[0] if lines else type(e).__name__)[:1000]


def run_pipeline(job: Job, todo: list[dict] | None, options) -> None:
  """Runs the pipeline writing the shards `todo` (None: count the tars and plan them first)
  with the Beam PipelineOptions `options`."""
  import apache_beam as beam
  p = beam.Pipeline(options=options)
  if todo is None:
    shards = (p
              | "Tars" >> beam.Create(list(enumerate(job.tars)))
              | "SpreadTars" >> beam.Reshuffle()
              | "CountKeyGroups" >> beam.MapTuple(_count_tar)
              | "AllCounts" >> beam.combiners.ToList()
              | "PlanShards" >> beam.FlatMap(_plan_from_counts, job))
  else:
    shards = p | "Shards" >> beam.Create(todo)
  _ = (shards
       | "SpreadShards" >> beam.Reshuffle()
       | "WriteShards" >> beam.Map(write_shard, job))
  with _importable_by_workers():
    try:
      result = p.run()
      result.wait_until_finish()
    except (KeyboardInterrupt, make_dataset.UsageError):
      raise
    except Exception as e:  # Beam wraps what a worker raised in its own exception types.
      raise RuntimeError(f"the Beam pipeline failed: {_failure(e)}") from e
  state = str(getattr(result, "state", "DONE"))
  if state.split(".")[-1] not in ("DONE", "UNKNOWN"):
    raise RuntimeError(f"the Beam pipeline ended in state {state}")


def convert(reader, out: str, split: str, *, examples_per_shard: int = 1000,
            verify_images: bool = True, workers: int = 4, log=None,
            pipeline_args: Sequence[str] = (), pause_s: float = 0.0) -> dict:
  """make_dataset.convert through a Beam pipeline: the same files, its shards written in
  parallel. `pipeline_args` are Beam pipeline options (the DirectRunner by default);
  `pause_s` (tests) makes every worker wait that long after each shard it writes.

  Returns the split's entry of dataset.json.
  """
  log = log or sys.stderr
  require_beam()
  options = pipeline_options(pipeline_args)
  meta, config = make_dataset.check_output(reader, out, split,
                                           examples_per_shard=examples_per_shard,
                                           verify_images=verify_images)
  job = job_of(reader, out, split, examples_per_shard=examples_per_shard,
               verify_images=verify_images, workers=workers, pause_s=pause_s)
  _open_state(job, config, meta)
  finished = finished_shards(job)
  for k in _recorded(job) - finished:  # Its shard file is gone: written again.
    storage.remove(storage.join(job.state, done_name(split, k)))
  counts = read_counts(job) if job.tars else [reader.total]
  plan = None if counts is None else plan_shards(job, counts)
  if finished:
    of = "" if plan is None else f"of {len(plan)} "
    log.write(f"Resuming split {split!r} in {out}: {len(finished)} shards {of}already "
              "written; skipping them.\n")
  todo = None if plan is None else [s for s in plan if s["index"] not in finished]
  if todo is None or todo:
    with _ShardProgress(job, log, None if plan is None else len(plan), finished):
      run_pipeline(job, todo, options)
  if plan is None:
    counts = read_counts(job)
    if counts is None:
      raise RuntimeError(f"the Beam pipeline finished without recording the tars' counts in "
                         f"{storage.join(job.state, COUNTS)}")
    plan = plan_shards(job, counts)
  done = []
  for spec in plan:
    path = storage.join(job.state, done_name(split, spec["index"]))
    if not storage.exists(path):
      raise RuntimeError(f"the Beam pipeline finished but {spec['file']} is not recorded as "
                         f"written ({path}); run the same command again.")
    done.append(json.loads(storage.read_text(path)))
  for name in storage.listdir(job.state):  # Temporary files of killed workers.
    if ".array_record.tmp-" in name:
      storage.remove(storage.join(job.state, name))
  return make_dataset.finish_split(out, split, done, meta, reader, log)
