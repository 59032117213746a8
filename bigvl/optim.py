"""Optax optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

import re

import jax
import optax


def path_str(path) -> str:
  """`/`-joined param path; flax's LogicallyPartitioned `.value` hop is left out."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
  return "/".join(parts)


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then `schedule` (cosine | linear | constant) to `lr * min_lr_ratio`."""
  lr, warmup = float(cfg.lr), int(cfg.warmup_steps)
  end = lr * float(cfg.min_lr_ratio)
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(cfg.min_lr_ratio))
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(lr, end, decay_steps)
  elif cfg.schedule == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ValueError(f"Unknown config.optimizer.schedule {cfg.schedule!r}; "
                     "valid: cosine, linear, constant.")
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(cfg, total_steps: int, frozen: str = ""
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer (with global-norm clipping and weight-decay mask) and its schedule.

  Params whose path fully matches `cfg.frozen_pattern` or `frozen` (the objective's: DINO's
  teacher) are never changed by it and get no optimizer state.
  """
  schedule = make_schedule(cfg, total_steps)
  pattern = re.compile(cfg.wd_pattern)

  def wd_mask(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(pattern.fullmatch(path_str(p))),
                                            params)

  if cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8),
                      weight_decay=cfg.weight_decay, mask=wd_mask)
  elif cfg.name == "sgd":
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=wd_mask),
                      optax.sgd(schedule, momentum=cfg.b1))
  elif cfg.name == "adafactor":
    opt = optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None,
                          weight_decay_mask=wd_mask)
  else:
    raise ValueError(f"Unknown config.optimizer.name {cfg.name!r}; valid: adamw, sgd, adafactor.")
  if cfg.grad_clip and cfg.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
  frozen_re = "|".join(f"(?:{p})" for p in (cfg.get("frozen_pattern", ""), frozen) if p)
  if frozen_re:
    frozen_re = re.compile(frozen_re)

    def labels(params):
      return jax.tree_util.tree_map_with_path(
          lambda p, _: "frozen" if frozen_re.fullmatch(path_str(p)) else "train", params)
    # Outermost, so that frozen params' gradients do not count in the clipping norm.
    opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)
  return opt, schedule
