"""Evaluators: an entry of `config.evals` -> an evaluator.

An evaluator is built as `Evaluator(ctx, **options)` from an entry of `config.evals`
(`config.evals.<eval_name> = dict(name="zeroshot", every=500, data=dict(name="digits",
split="test", pp="..."), ...)`; `every` belongs to the loop) and run as
`evaluator.run(params) -> {metric: float}`; the loop logs `eval/<eval_name>/<metric>`.
An evaluator that reads a dataset takes it as the nested data config `data`
(bigvl/evaluators/context.py); its own options (batch_size, class_names, ...) sit beside it.
An evaluator with an `images() -> {tag: uint8 (h, w, 3)}` method has those images of its
last run written to TensorBoard as `eval/<eval_name>/<tag>`.
`ctx` (EvalContext) carries the model, tokenizer, text length, mesh and rules.
Each evaluator module registers its evaluators with `@EVALUATORS.register("name")` (from
bigvl.registry); this package is EVALUATORS' list of those modules.
"""

from __future__ import annotations

from bigvl.evaluators.context import EvalContext, eval_batch_size  # noqa: F401
from bigvl.registry import EVALUATORS, SOURCES, accepted_kwargs, config_dict

# The evaluator modules, one line each (a new evaluator file adds its line here).
from bigvl.evaluators import binding  # noqa: F401  (binding)
from bigvl.evaluators import captioning  # noqa: F401  (captioning, scoring_zeroshot, perplexity)
from bigvl.evaluators import classify  # noqa: F401  (classify)
from bigvl.evaluators import dense_probe  # noqa: F401  (dense_probe)
from bigvl.evaluators import in_context  # noqa: F401  (in_context)
from bigvl.evaluators import probes  # noqa: F401  (fewshot, knn)
from bigvl.evaluators import reconstruction  # noqa: F401  (reconstruction)
from bigvl.evaluators import retrieval  # noqa: F401  (retrieval)
from bigvl.evaluators import zeroshot  # noqa: F401  (zeroshot)

LOOP_KEYS = ("every",)
# Keys of the old flat form of an evaluator's dataset (now the nested `data` config).
FLAT_DATA_KEYS = ("source", "split", "pp", "test_split")


def build(name: str, eval_cfg, ctx: EvalContext):
  """The evaluator of entry `config.evals.<name>` (`eval_cfg`), built with `ctx`."""
  where = f"config.evals.{name}"
  cfg = config_dict(eval_cfg, where)
  kind = EVALUATORS.config_name(cfg, where)
  for k in LOOP_KEYS:
    cfg.pop(k, None)
  flat = [k for k in FLAT_DATA_KEYS if k in cfg]
  if flat:
    raise ValueError(
        f"{where} has {', '.join(map(repr, flat))}: an evaluator's dataset is a nested data "
        f"config now; write data=dict(name={cfg.get('source', '...')!r}, split=..., pp=..., "
        "**source options).")
  accepted = accepted_kwargs(EVALUATORS.get(kind))
  if "data" in cfg:
    SOURCES.config_name(config_dict(cfg["data"], f"{where}.data"), f"{where}.data")
  elif accepted is not None and "data" in accepted:
    raise ValueError(f"{where}.data is not set: the {kind!r} evaluator reads a dataset; write "
                     "data=dict(name=..., split=..., pp=...).")
  return EVALUATORS.build_from_config(cfg, where=where, ctx=ctx)
