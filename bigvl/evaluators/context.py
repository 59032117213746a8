"""What every evaluator is built with: the run's context, and its dataset from a data config.

An evaluator that reads a dataset takes it as `data`, a data config like a training one:
`data=dict(name="digits", split="test", pp="...", **source options)`; `split` is the split
evaluated (default "test"), `pp` its preprocessing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bigvl.registry import SOURCES, config_dict


@dataclasses.dataclass
class EvalContext:
  model: Any
  tokenizer: Any
  text_len: int
  mesh: Any
  rules: Any
  process_index: int = 0
  process_count: int = 1
  objective: Any = None       # The run's objective (the reconstruction evaluator reuses it).


def eval_batch_size(ctx: EvalContext, batch_size: int) -> int:
  """`batch_size` rounded up to a multiple of the data-parallel size, so batches shard evenly."""
  from bigvl import sharding as sh
  dp = sh.data_parallel_size(ctx.mesh, ctx.rules)
  return -(-batch_size // dp) * dp


def eval_source(data, what: str, split: str | None = None):
  """The source of the data config `data` ({name, split?, pp?, **options}) of evaluator
  `what`; at `split` when given (another split of the same data, e.g. a probe's train split),
  else at `data`'s split, default "test"."""
  cfg = config_dict(data, f"{what} data")
  cfg.pop("pp", None)
  if split is not None:
    cfg["split"] = split
  cfg.setdefault("split", "test")
  return SOURCES.build_from_config(cfg, where=f"{what} data")


def eval_pp(data) -> str:
  """The pp spec of an evaluator's data config ("" when it sets none)."""
  return data.get("pp", "") or ""


def data_label(data) -> str:
  """`name:split` of an evaluator's data config, for messages."""
  return f"{data.get('name')}:{data.get('split', 'test')}"
