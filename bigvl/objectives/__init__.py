"""Objective registry: `config.objective.name` -> a loss.

An objective is built from its config options; the loop calls its
`loss(model, params, batch, rng, *, train=True) -> (loss, metrics)`, with `loss` a scalar
and `metrics` a dict of scalars (logged under `train/`), and the optional hooks it defines.
The contract is `bigvl/objectives/protocol.py` (`Objective`, `ObjectiveHooks`), explained
with a runnable example in docs/objectives.md. Register a new one with
`@OBJECTIVES.register("name")` (from bigvl.registry) on it and an import line for its module
below, or point `config.objective.name` at `"your.module:YourObjective"`.
"""

from bigvl.registry import OBJECTIVES, accepted_kwargs, config_dict

# The objective modules, one line each: importing this package registers them all
# (each registers its objectives with `@OBJECTIVES.register(...)` from bigvl.registry).
from bigvl.objectives import captioning  # noqa: F401,E402  (captioning, cappa, coca)
from bigvl.objectives import classification  # noqa: F401,E402  (classification)
from bigvl.objectives import composite  # noqa: F401,E402  (composite: a weighted sum of terms)
from bigvl.objectives import contrastive  # noqa: F401,E402  (clip, siglip)
from bigvl.objectives import dino  # noqa: F401,E402  (dino)
from bigvl.objectives import interleaved  # noqa: F401,E402  (flamingo)
from bigvl.objectives import language  # noqa: F401,E402  (lm)
from bigvl.objectives import masked_image  # noqa: F401,E402  (mae, simmim)
from bigvl.objectives import self_distill  # noqa: F401,E402  (self_distill: SILC + TIPS)


def build(objective_cfg, total_steps: int | None = None):
  """The objective named `objective_cfg.name`, built with its other keys. One that takes a
  `total_steps` option (a schedule of its own, e.g. DINO's teacher momentum) gets the run's
  unless the config sets it."""
  where = "config.objective"
  cfg = config_dict(objective_cfg, where)
  name = OBJECTIVES.config_name(cfg, where)
  accepted = accepted_kwargs(OBJECTIVES.get(name))
  if total_steps is not None and "total_steps" not in cfg and accepted and \
      "total_steps" in accepted:
    cfg["total_steps"] = total_steps
  objective = OBJECTIVES.build_from_config(cfg, where=where)
  if not callable(getattr(objective, "loss", None)):
    raise ValueError(
        f"config.objective.name={name!r} builds a {type(objective).__name__}, which "
        "has no loss(model, params, batch, rng, *, train=True) method; see docs/objectives.md.")
  return objective
