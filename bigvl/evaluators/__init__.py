"""Evaluator registry.

An evaluator is built as `Evaluator(ctx, **options)` from an entry of `config.evals`
(`{type: "zeroshot", every: 500, ...}`; `type` and `every` belong to the loop) and
run as `evaluator.run(params) -> {metric: float}`; the loop logs `eval/<name>/<metric>`.
An evaluator with an `images() -> {tag: uint8 (h, w, 3)}` method has those images of its
last run written to TensorBoard as `eval/<name>/<tag>`.
`ctx` (EvalContext) carries the model, tokenizer, text length, mesh and rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bigvl.registry import Registry

EVALUATORS = Registry("evaluator")


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


from bigvl.evaluators import (  # noqa: E402,F401
    captioning, in_context, probes, reconstruction, retrieval, zeroshot)

LOOP_KEYS = ("type", "every")


def build(name: str, eval_cfg, ctx: EvalContext):
  cfg = eval_cfg.to_dict() if hasattr(eval_cfg, "to_dict") else dict(eval_cfg)
  if "type" not in cfg:
    raise ValueError(f"config.evals.{name} has no 'type'; valid: {', '.join(EVALUATORS.names())}.")
  kind = cfg["type"]
  for k in LOOP_KEYS:
    cfg.pop(k, None)
  return EVALUATORS.build(kind, ctx=ctx, **cfg)
