"""Objective registry: `config.objective.name` -> a loss.

An objective is built from its config options and called as
`objective(model, params, batch, rng, train=True) -> (loss, metrics)`, with `loss` a
scalar and `metrics` a dict of scalars (logged under `train/`). It is a pure function
of its arguments. Register a new one with `@OBJECTIVES.register("name")`, or point
`config.objective.name` at `"your.module:YourObjective"`.
"""

from bigvl.registry import Registry, accepted_kwargs

OBJECTIVES = Registry("objective")


def check_label_smoothing(value: float) -> None:
  """Raises a ValueError naming config.objective.label_smoothing unless it is in [0, 1)."""
  if not 0.0 <= value < 1.0:
    raise ValueError(f"config.objective.label_smoothing={value} must be in [0, 1).")


# Importing the families registers them.
from bigvl.objectives import (  # noqa: E402,F401
    captioning, classification, contrastive, dino, interleaved, language, masked_image)


def build(objective_cfg, total_steps: int | None = None):
  """The objective named `objective_cfg.name`, built with its other keys. One that takes a
  `total_steps` option (a schedule of its own, e.g. DINO's teacher momentum) gets the run's
  unless the config sets it."""
  cfg = objective_cfg.to_dict() if hasattr(objective_cfg, "to_dict") else dict(objective_cfg)
  if "name" not in cfg:
    raise ValueError("config.objective.name is not set; valid: " + ", ".join(OBJECTIVES.names()))
  name = cfg.pop("name")
  accepted = accepted_kwargs(OBJECTIVES.get(name))
  if total_steps is not None and "total_steps" not in cfg and accepted and \
      "total_steps" in accepted:
    cfg["total_steps"] = total_steps
  return OBJECTIVES.build(name, **cfg)
