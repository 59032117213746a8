"""Grain pipelines: the infinite, shuffled, augmented training stream, and eval batches.

The training stream is a grain MapDataset whose element s is the batch of step s+1, a pure
function of (config, seed, s):

* examples: each source is shuffled anew every epoch (data/shuffle.py) and repeated; a mixture interleaves
  its sources by weight (`grain.MapDataset.mix`), deterministically;
* element j of the global stream goes to process j % process_count, so each host reads
  only its share, and its augmentation is seeded by (seed, j) whatever the process or
  worker count;
* an example whose image cannot be decoded, or that reaches a text op with no usable
  caption, is replaced by a random usable one (drawn from (seed, j) too), flagged in the
  batch's `_skipped` and logged with its key; `data.on_corrupt="error"` stops instead.

Grain's iterator state rides in every checkpoint (see checkpoint.py); because of the
above, restoring it and indexing the stream at the restored step give the same batches,
which is also what makes a restore onto another process or worker count exact.
"""

from __future__ import annotations

import sys
from typing import Iterator, NamedTuple

import grain
import numpy as np
from absl import flags

from bigvl.data import sources, transforms
from bigvl.data.shuffle import ShuffledRepeat

# A stream position whose replacement draws keep failing means the data is broken, not a
# few bad files: stop and say so.
MAX_REPLACEMENTS = 100
_STREAM_LEN = 2 ** 62  # "Infinite" and still an int64 index.


class DataError(RuntimeError):
  """The training data cannot be read; the message names the example and the fix."""


def _arrays_only(ex: dict) -> dict:
  # Strings (captions, keys) cannot become device arrays; they stop at the batcher.
  return {k: v for k, v in ex.items()
          if isinstance(v, (np.ndarray, np.generic, int, float, bool))}


def _unreadable(e: Exception) -> bool:
  # Reading a source may fail on the file itself (a missing or unreadable image in a
  # folder source, a decoder error inside tfds), or the pp on the example's data (an
  # undecodable image, no usable caption: transforms.UnusableExample); code and config
  # errors must still raise.
  return isinstance(e, (transforms.UnusableExample, OSError, SyntaxError)) or (
      type(e).__name__ in ("UnidentifiedImageError", "DecompressionBombError"))


def _kind(e: Exception) -> str:
  """How a log line calls the example that raised `e` (an `_unreadable` error)."""
  return "unusable" if isinstance(e, transforms.MissingText) else "unreadable"


class LoaderBatch(NamedTuple):
  """One process's share of a training batch, as the loader hands it to the loop.

  inputs: {field: (local_batch, ...)} the model inputs, what the pp's `keep(...)` kept.
  skipped: (local_batch,) bool, True where an unreadable or unusable example was replaced.
  source: (local_batch,) int32, which source (index into `Stream.source_names`) each row
    came from.
  """
  inputs: dict
  skipped: np.ndarray
  source: np.ndarray


def source_configs(train_cfg) -> list[tuple[str, dict]]:
  """(label, source config with its own pp and weight) of each source of a train data
  config: the one source, or a mixture's components in sorted order of their labels."""
  cfg = train_cfg.to_dict() if hasattr(train_cfg, "to_dict") else dict(train_cfg)
  mixture = cfg.pop("mixture", None)
  cfg.pop("pp", None)
  if mixture:
    if set(cfg) - {"weight"}:
      raise ValueError(f"A mixture takes its sources under 'mixture'; move {sorted(cfg)} "
                       "into a component.")
    return [(label, dict(c)) for label, c in sorted(mixture.items())]
  return [(str(cfg.get("name")), cfg)]


def build_source(source_cfg: dict):
  """The source of one `source_configs` entry (its pp and weight are the loader's)."""
  cfg = {k: v for k, v in source_cfg.items() if k not in ("pp", "weight")}
  return sources.build(cfg)


class _Component:
  """One source of the stream with its own pp (a mixture has several)."""

  def __init__(self, label: str, cfg: dict, context: dict, seed: int):
    cfg = dict(cfg)
    self.weight = float(cfg.pop("weight", 1.0))
    self.pp = transforms.build(cfg.pop("pp", ""), **context)
    self.label = label
    self.name = label + (f" split {cfg['split']}" if cfg.get("split") else "")
    self.source = build_source(cfg)
    if len(self.source) == 0:
      raise ValueError(f"Training source {self.name} is empty.")
    self.examples = grain.MapDataset.source(ShuffledRepeat(self.source, seed, _STREAM_LEN))


class Stream:
  """The global example stream: `stream.example(j)` is element j, with its pp applied.

  `train_cfg` is one source (`{name, split?, pp, ...options}`) or a mixture
  (`{mixture: {label: {name, weight, pp?, ...}}, pp}`: each component's own pp, then the
  shared pp). `source_names`: the sources' labels, in the order of `LoaderBatch.source`.

  `device_ops=True`: a value_range/normalize at the end of the (shared) pp, on a field that
  is uint8 there, is left out (`transforms.split_device_tail`): that field stays uint8 and
  `device_transform` is what the train step applies to it. Whether the field is uint8 is
  read off element 0; a later element where it is not raises (no batch mixes the two).
  """

  def __init__(self, train_cfg, *, seed: int, context: dict, on_corrupt: str = "skip",
               device_ops: bool = False):
    cfg = train_cfg.to_dict() if hasattr(train_cfg, "to_dict") else dict(train_cfg)
    if on_corrupt not in ("skip", "error"):
      raise ValueError(f"config.data.on_corrupt={on_corrupt!r}; valid: skip, error.")
    self.on_corrupt = on_corrupt
    self.seed = seed
    ops = transforms.build_ops(cfg.get("pp", ""), **context)
    self.pp = transforms.chain(ops)
    configs = source_configs(cfg)
    self.components = [_Component(label, c, context, seed + i)
                       for i, (label, c) in enumerate(configs)]
    self.source_names = [c.label for c in self.components]
    if "mixture" in cfg:
      weights = [c.weight for c in self.components]
      if min(weights) <= 0:
        raise ValueError(f"Mixture weights must be > 0, got {weights}.")
      tagged = [c.examples.map(lambda ex, i=i: (i, ex)) for i, c in enumerate(self.components)]
      self.examples = grain.MapDataset.mix(tagged, weights)
    else:
      self.examples = self.components[0].examples.map(lambda ex: (0, ex))
    self.device_transform = transforms.DeviceTransform()
    if device_ops:
      host_ops, deferred = transforms.split_device_tail(ops)
      if deferred:
        self._defer(host_ops, deferred)

  def _defer(self, host_ops, deferred: dict) -> None:
    """Runs the host part of the pp only, for the deferred fields that element 0 has as
    uint8; the affines of any other deferred field go back on the host, at the end."""
    full = self.pp
    self.pp = transforms.chain(host_ops)
    probe, _, _ = self.example(0)
    on_device = {k: v for k, v in deferred.items()
                 if k in probe and np.asarray(probe[k]).dtype == np.uint8}
    back = [a for k, v in deferred.items() if k not in on_device for a in v]
    if not on_device:
      self.pp = full
      return
    self.pp = transforms.chain(host_ops + transforms.affine_ops(back))
    self.device_transform = transforms.DeviceTransform(
        tuple((k, tuple(v)) for k, v in sorted(on_device.items())))

  def _check_uint8(self, ex: dict, j: int) -> dict:
    for k in self.device_transform.fields:
      if k in ex and ex[k].dtype != np.uint8:
        raise DataError(
            f"Field {k!r} of {self._key(j)} is {ex[k].dtype} at the pp's value_range/normalize; "
            "element 0 had it uint8, so that op runs on the device. Make every source give "
            "uint8 there, or set config.data.device_normalize=False.")
    return ex

  def example_source(self, j: int) -> int:
    """The index of the source that stream element j comes from."""
    return self.examples[j][0]

  def _load(self, j: int) -> dict:
    i, ex = self.examples[j]
    rng = np.random.default_rng((self.seed, j))
    return self._check_uint8(_arrays_only(self.pp(self.components[i].pp(ex, rng), rng)), j)

  def example(self, j: int) -> tuple[dict, bool, int]:
    """(element j after pp, whether it replaces an unreadable example, its source index)."""
    i = self.example_source(j)
    try:
      return self._load(j), False, i
    except Exception as e:
      if not _unreadable(e):
        raise
      first = e
    key = self._key(j)
    if self.on_corrupt == "error":
      raise DataError(f"{_kind(first).capitalize()} example {key}: {first}. Fix or remove it, "
                      "or set config.data.on_corrupt='skip' to skip such examples.") from first
    print(f"WARNING: skipping {_kind(first)} example {key}: {first}", file=sys.stderr,
          flush=True)
    draws = np.random.default_rng((self.seed, j, 1))
    for _ in range(MAX_REPLACEMENTS):
      r = int(draws.integers(0, _STREAM_LEN))
      try:
        return self._load(r), True, self.example_source(r)
      except Exception as e:
        if not _unreadable(e):
          raise
        print(f"WARNING: skipping {_kind(e)} example {self._key(r)}: {e}", file=sys.stderr,
              flush=True)
    raise DataError(f"{MAX_REPLACEMENTS} random replacements for {_kind(first)} example {key} "
                    "were unreadable or unusable too: the data looks broken; check it with "
                    "tools/make_dataset.py, which reports unreadable images and examples "
                    "without a caption.")

  def _key(self, j: int) -> str:
    i, ex = self.examples[j]
    return f"{ex.get('key', '?')} (source {self.components[i].name}, stream position {j})"


def _stack(exs: list[dict]) -> dict:
  keys = set(exs[0])
  for ex in exs[1:]:
    if set(ex) != keys:
      raise ValueError(f"Examples of one batch have different fields: {sorted(keys)} vs "
                       f"{sorted(ex)}; end every mixture component's pp with the same keep(...).")
  return {k: np.stack([ex[k] for ex in exs]) for k in exs[0]}


def train_pipeline(train_cfg, *, batch_size: int, seed: int, context: dict,
                   process_index: int = 0, process_count: int = 1, on_corrupt: str = "skip",
                   device_ops: bool = False
                   ) -> tuple[grain.MapDataset, transforms.DeviceTransform]:
  """(`train_dataset`, the DeviceTransform the train step applies to its batches: empty
  unless `device_ops`, see `Stream`)."""
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} processes.")
  stream = Stream(train_cfg, seed=seed, context=context, on_corrupt=on_corrupt,
                  device_ops=device_ops)
  local = batch_size // process_count

  def make_batch(s: int) -> dict:
    pos = s * batch_size + process_index + process_count * np.arange(local)
    exs, skipped, source = zip(*(stream.example(int(j)) for j in pos))
    return LoaderBatch(_stack(list(exs)), np.asarray(skipped, bool),
                       np.asarray(source, np.int32))

  ds = grain.MapDataset.range(_STREAM_LEN // batch_size).map(make_batch)
  return ds, stream.device_transform


def train_dataset(train_cfg, *, batch_size: int, seed: int, context: dict,
                  process_index: int = 0, process_count: int = 1,
                  on_corrupt: str = "skip", device_ops: bool = False) -> grain.MapDataset:
  """Per-process batches of the training stream, as a random-access dataset.

  Element s is a LoaderBatch of this process's share of global batch s: stream elements
  s*batch_size + process_index + k*process_count; its `source` indexes the labels of
  `source_configs(train_cfg)`. `device_ops`: leave a deferrable value_range/normalize to the
  device (`train_pipeline` also gives the transform that then completes the batch).
  """
  return train_pipeline(train_cfg, batch_size=batch_size, seed=seed, context=context,
                        process_index=process_index, process_count=process_count,
                        on_corrupt=on_corrupt, device_ops=device_ops)[0]


def train_iterator(train_cfg, *, batch_size: int, seed: int, start_step: int, context: dict,
                   workers: int = 0, prefetch: int = 2, process_index: int = 0,
                   process_count: int = 1, on_corrupt: str = "skip",
                   state: dict | None = None, device_ops: bool = False
                   ) -> grain.DatasetIterator:
  """Iterator over the per-process batches of steps start_step+1, start_step+2, ...

  `state` (from `iterator.get_state()`, as saved in a checkpoint) restores the position
  instead of `start_step`; it must come from the same worker count. `device_ops`: as in
  `train_dataset` (the Run passes config.data.device_normalize).
  """
  ds = train_dataset(train_cfg, batch_size=batch_size, seed=seed, context=context,
                     process_index=process_index, process_count=process_count,
                     on_corrupt=on_corrupt, device_ops=device_ops)
  it = (ds if state is not None else ds[start_step:]).to_iter_dataset(
      # Few reader threads: the machine may have 2 cores, and workers parallelise further.
      grain.ReadOptions(num_threads=1 if workers else 2, prefetch_buffer_size=max(prefetch, 2)))
  if workers > 0:
    # Grain's workers read absl flags; a library caller (tests, notebooks) has parsed none.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=prefetch),
                        worker_init_fn=_die_with_parent)
  it = iter(it)
  if state is not None:
    it.set_state(state)
  return it


def _die_with_parent(worker_index: int, worker_count: int) -> None:
  """Grain worker init: a trainer killed with SIGKILL (preemption, OOM killer) must not
  leave its workers running, holding memory and the trainer's stdout.

  A watchdog thread, not prctl(PR_SET_PDEATHSIG): that fires when the *thread* that
  started the worker ends, and grain starts workers from a short-lived thread.
  """
  del worker_index, worker_count
  import os
  import threading
  import time
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)

  threading.Thread(target=watch, daemon=True, name="bigvl-parent-watchdog").start()


class IndexedSource:
  """`source` whose examples also carry their index as `_index`: evaluators use it to match
  a batch row (from any process) back to its example."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return dict(self.source[i], _index=np.int64(i))


def eval_batches(source, pp, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Deterministic batches of a whole source, padded to `batch_size`.

  Each batch has `_mask` (batch,) bool marking real examples. Every process yields the
  same number of batches; process p holds examples p, p+P, ... .
  """
  n = len(source)
  per_proc = -(-n // process_count)
  idx = list(range(process_index, n, process_count))
  for start in range(0, per_proc, batch_size):
    chunk = idx[start:start + batch_size]
    exs = [_arrays_only(pp(source[i], None)) for i in chunk]
    if not exs:
      # This process has no examples left but others do: pad with a copy of example 0.
      exs = [_arrays_only(pp(source[0], None))]
      mask = [False]
    else:
      mask = [True] * len(exs)
    while len(exs) < batch_size:
      exs.append(exs[0])
      mask.append(False)
    batch = {k: np.stack([e[k] for e in exs]) for k in exs[0]}
    batch["_mask"] = np.asarray(mask)
    yield batch
