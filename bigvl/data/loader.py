"""Grain pipelines: the infinite, shuffled, augmented training stream, and eval batches.

The training stream is a grain MapDataset, so batch `s` is a pure function of
(config, seed, s): resuming at step s is indexing from s, with nothing else to save.
Each process reads only its share of every global batch.
"""

from __future__ import annotations

from typing import Iterator

import grain
import numpy as np

from bigvl.data import sources, transforms


def _arrays_only(ex: dict) -> dict:
  # Strings (captions, keys) cannot become device arrays; they stop at the batcher.
  return {k: v for k, v in ex.items()
          if isinstance(v, (np.ndarray, np.generic, int, float, bool))}


def train_dataset(train_cfg, *, batch_size: int, seed: int, context: dict,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Per-process batches of the training stream, as a random-access dataset.

  Element j of the global stream goes to process j % process_count; augmentation is
  seeded by j, so it does not depend on how many processes read.
  """
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} processes.")
  source = sources.build(train_cfg)
  if len(source) == 0:
    raise ValueError(f"Training source {train_cfg.get('source')}:{train_cfg.get('split')} is empty.")
  pp = transforms.build(train_cfg.get("pp", ""), **context)
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = ds.random_map(lambda ex, rng: _arrays_only(pp(ex, rng)), seed=seed)
  if process_count > 1:
    ds = ds[process_index::process_count]
  return ds.batch(batch_size // process_count, drop_remainder=True)


def train_iterator(train_cfg, *, batch_size: int, seed: int, start_step: int, context: dict,
                   workers: int = 0, prefetch: int = 2, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
  """Iterator over the per-process batches of steps start_step+1, start_step+2, ..."""
  ds = train_dataset(train_cfg, batch_size=batch_size, seed=seed, context=context,
                     process_index=process_index, process_count=process_count)
  # Few reader threads: examples are small and the machine may have 2 cores.
  it = ds[start_step:].to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(prefetch, 2)))
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=prefetch))
  return iter(it)


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
