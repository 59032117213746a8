"""SigLIP 2's self-distillation: SILC's local-to-global consistency and TIPS-style masked
prediction, against one EMA teacher of the image tower. Model: `siglip2`.

Batch: `image` (b, h, w, c), the view the teacher sees, and for the local term
`crops_local` (b, L, h', w', c) (the pp `multi_crop(..., keep=True)` adds them and keeps
the image). Both terms compare the student's distribution over `out_dim` prototypes with
the teacher's centred, sharpened one (DINO's cross-entropy, bigvl/objectives/dino.py):

- local-to-global (SILC, Naeem et al. 2023): the student's `global_head` on each local
  crop against the teacher's on the image, averaged over crops and examples;
- masked prediction (TIPS, Maninis et al. 2024; iBOT's patch loss): the student sees the
  image with a random `mask_ratio` of its patches replaced by the mask token; its
  `patch_head` at the masked positions against the teacher's on the unmasked image,
  averaged over the masked patches.

loss = local_weight * local + masked_weight * masked. The teacher (the image tower and both
heads, `siglip2.TEACHER_PARAMS`) and the two centres live in the objective state; after
each step teacher <- m * teacher + (1 - m) * student with m = `teacher_momentum` (or, with
momentum_schedule="cosine", DINO's cosine from it to 1 over the run), centre <- c * centre + (1 - c) * batch mean of the
teacher's outputs. In SigLIP 2 this objective is a term of a `composite` with `siglip`,
switched on for the last 20% of training (docs/siglip2.md).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bigvl.models.siglip2 import TEACHER_PARAMS
from bigvl.models.vit import patch_grid
from bigvl.objectives.dino import teacher_momentum
from bigvl.objectives.masking import random_keep
from bigvl.objectives.protocol import Aux
from bigvl.registry import OBJECTIVES


def distill_cross_entropy(student_logits, teacher_logits, center, student_temp: float,
                          teacher_temp: float):
  """(..., K) student and teacher head outputs -> (...) -sum_k p_t log p_s, with
  p_t = softmax((teacher - center) / teacher_temp), p_s = softmax(student / student_temp)."""
  p_t = jax.nn.softmax((teacher_logits - center) / teacher_temp, axis=-1)
  return -jnp.sum(p_t * jax.nn.log_softmax(student_logits / student_temp, axis=-1), axis=-1)


@OBJECTIVES.register("self_distill")
@dataclasses.dataclass(frozen=True)
class SelfDistill:
  local_weight: float = 1.0
  masked_weight: float = 1.0
  mask_ratio: float = 0.5
  student_temp: float = 0.1
  teacher_temp: float = 0.04
  teacher_momentum: float = 0.996
  # "constant": the teacher's momentum stays `teacher_momentum` (SILC: a momentum that goes
  # to 1 stops the teacher learning from the image-text loss late in training); "cosine":
  # DINO's, from `teacher_momentum` at step 0 to 1 at total_steps.
  momentum_schedule: str = "constant"
  center_momentum: float = 0.9
  total_steps: int = 0                # Of the momentum schedule; the run's when not set.

  def __post_init__(self):
    if self.local_weight < 0 or self.masked_weight < 0 or not (self.local_weight or
                                                               self.masked_weight):
      raise ValueError("config.objective.local_weight and masked_weight must be >= 0, not "
                       "both 0.")
    if self.masked_weight and not 0.0 < self.mask_ratio < 1.0:
      raise ValueError(f"config.objective.mask_ratio={self.mask_ratio} must be in (0, 1).")
    for name in ("teacher_momentum", "center_momentum"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"config.objective.{name}={getattr(self, name)} must be in [0, 1].")
    if self.student_temp <= 0 or self.teacher_temp <= 0:
      raise ValueError("config.objective.student_temp and teacher_temp must be > 0.")
    if self.momentum_schedule not in ("constant", "cosine"):
      raise ValueError(f"config.objective.momentum_schedule={self.momentum_schedule!r}; valid: "
                       "constant, cosine.")

  def init_state(self, params):
    """{"teacher": a copy of the image tower and heads, "center_global", "center_patches":
    zeros (out_dim,)}."""
    missing = [k for k in TEACHER_PARAMS if k not in params]
    if missing:
      raise ValueError(f"The self_distill objective needs a model with {missing}: set "
                       "config.model.name='siglip2'.")
    k = jax.tree.leaves(params["global_head"]["last_layer"])[0].shape[-1]
    return {"teacher": {n: jax.tree.map(jnp.copy, params[n]) for n in TEACHER_PARAMS},
            "center_global": jnp.zeros((k,), jnp.float32),
            "center_patches": jnp.zeros((k,), jnp.float32)}

  def patch_mask(self, model, rng, image):
    """(b, n) bool: the patches the student's masked view replaces (random, mask_ratio)."""
    gh, gw = patch_grid(model.image, image.shape)
    return random_keep(rng, image.shape[0], gh * gw, self.mask_ratio)[1]

  def loss(self, model, params, batch, rng, *, train: bool = True, objective_state):
    image = batch["image"]
    if image.ndim != 4:
      raise ValueError("The self_distill objective takes fixed-size images (b, h, w, c); "
                       "drop naflex from the pp of a run that has this term.")
    features = lambda p, x, **kw: model.apply({"params": p}, x, method="distill_features",
                                               **kw)
    teacher = jax.lax.stop_gradient(
        features({**params, **objective_state["teacher"]}, image))
    ce = lambda s, t, c: distill_cross_entropy(s, t, jax.lax.stop_gradient(c),
                                               self.student_temp, self.teacher_temp)
    total, metrics = jnp.zeros((), jnp.float32), {}
    if self.local_weight:
      if "crops_local" not in batch:
        raise ValueError("The self_distill objective's local term needs `crops_local`: put "
                         "multi_crop(..., keep=True) in config.data.train.pp, or set "
                         "config.objective.local_weight=0.")
      # (b, L, h, w, c) -> (L * b, ...): every crop of every example as one batch.
      crops = batch["crops_local"]
      flat = crops.swapaxes(0, 1).reshape((-1,) + crops.shape[2:])
      student = features(params, flat, train=train,
                         rngs={"dropout": jax.random.fold_in(rng, 1)})["global"]
      student = student.reshape((crops.shape[1], image.shape[0], -1))
      local = jnp.mean(ce(student, teacher["global"][None], objective_state["center_global"]))
      total += self.local_weight * local
      metrics["local"] = local
    if self.masked_weight:
      mask = self.patch_mask(model, jax.random.fold_in(rng, 2), image)
      student = features(params, image, mask=mask, train=train,
                         rngs={"dropout": jax.random.fold_in(rng, 3)})["patches"]
      per_patch = ce(student, teacher["patches"], objective_state["center_patches"])
      m = mask.astype(jnp.float32)
      masked = jnp.sum(per_patch * m) / jnp.maximum(jnp.sum(m), 1.0)
      total += self.masked_weight * masked
      metrics["masked"] = masked
    return total, Aux(metrics=metrics,
                      update_inputs={"global": jnp.mean(teacher["global"], axis=0),
                                     "patches": jnp.mean(teacher["patches"], axis=(0, 1))})

  def update_state(self, objective_state, old_params, new_params, update_inputs, step):
    del old_params
    m = (teacher_momentum(step, self.teacher_momentum, self.total_steps)
         if self.momentum_schedule == "cosine" else self.teacher_momentum)
    c = self.center_momentum
    teacher = {n: jax.tree.map(lambda t, s: m * t + (1.0 - m) * s, objective_state["teacher"][n],
                               new_params[n]) for n in TEACHER_PARAMS}
    return {"teacher": teacher,
            "center_global": c * objective_state["center_global"] +
                             (1.0 - c) * update_inputs["global"],
            "center_patches": c * objective_state["center_patches"] +
                              (1.0 - c) * update_inputs["patches"]}
