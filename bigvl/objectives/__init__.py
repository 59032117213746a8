"""Objective registry: `config.objective.name` -> a loss.

An objective is built from its config options and called as
`objective(model, params, batch, rng, train=True) -> (loss, metrics)`, with `loss` a
scalar and `metrics` a dict of scalars (logged under `train/`). It is a pure function
of its arguments. Register a new one with `@OBJECTIVES.register("name")`, or point
`config.objective.name` at `"your.module:YourObjective"`.
"""

from bigvl.registry import Registry

OBJECTIVES = Registry("objective")

# Importing the families registers them.
from bigvl.objectives import captioning, contrastive  # noqa: E402,F401


def build(objective_cfg):
  cfg = objective_cfg.to_dict() if hasattr(objective_cfg, "to_dict") else dict(objective_cfg)
  if "name" not in cfg:
    raise ValueError("config.objective.name is not set; valid: " + ", ".join(OBJECTIVES.names()))
  return OBJECTIVES.build(cfg.pop("name"), **cfg)
