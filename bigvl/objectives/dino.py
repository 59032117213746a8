"""DINO self-distillation. Batch: `crops_global` (b, n_global, H, W, c) and optionally
`crops_local` (b, n_local, h, w, c), as the `multi_crop` transform makes them. Model: `dino`.

The loss is the cross-entropy between the teacher's sharpened, centred distribution on each
global crop and the student's on every other crop. The teacher gets no gradient: its params
and the centre are the objective's state (`init_state`: teacher = a copy of the student,
centre = 0), outside the params the optimizer trains, and are moved by `update_state`:
teacher <- m * teacher + (1 - m) * student, with m following a cosine from
`teacher_momentum` to 1 over the run; centre <- c * centre + (1 - c) * mean teacher output.
Evaluators see the teacher (`eval_params`), as in the paper.

The paper's teacher temperature warm-up: with `warmup_teacher_temp_steps` > 0 the teacher
temperature goes linearly from `warmup_teacher_temp` at step 0 to `teacher_temp` at that
step, then stays (main_dino.py's `--warmup_teacher_temp`, `--warmup_teacher_temp_epochs`).
The temperature of the next step is then kept in the objective state (`teacher_temp`, a
scalar set by `update_state`), since the loss sees the state but not the step.

Options beyond the paper's (both from DINOv2, both off by default):

- `centering="sinkhorn"`: the teacher's targets are a Sinkhorn-Knopp normalisation of
  exp(teacher / teacher_temp) over the batch's global crops (`sinkhorn_iters` rounds), so
  that every prototype gets an equal share of the batch and every crop one unit of mass,
  instead of subtracting the EMA centre (which is still tracked, but not used).
- `koleo_weight`: adds that times the KoLeo loss, -mean log(distance of each L2-normalised
  student backbone feature of a global crop to its nearest neighbour among the batch's
  features of the same crop index), which spreads the features out.
"""

from __future__ import annotations

import dataclasses
import math
import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvl.objectives.protocol import Aux
from bigvl.registry import OBJECTIVES


def teacher_momentum(step, base: float, total_steps: int):
  """Cosine schedule from `base` at step 0 to 1 at `total_steps`."""
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 1.0)
  return 1.0 - (1.0 - base) * (jnp.cos(math.pi * frac) + 1.0) / 2.0


def teacher_temp_at(step, start: float, end: float, warmup_steps: int):
  """Linear from `start` at step 0 to `end` at `warmup_steps`, then `end`."""
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / max(warmup_steps, 1), 1.0)
  return start + (end - start) * frac


def _crop_major(crops):
  """(b, n, h, w, c) -> (n * b, h, w, c), all first crops, then all second crops, ..."""
  return crops.swapaxes(0, 1).reshape((-1,) + crops.shape[2:])


def _ema(old, new, m):
  return jax.tree.map(lambda o, n: m * o + (1.0 - m) * n, old, new)


def sinkhorn_knopp(scores, iters: int = 3):
  """(n, K) scores -> (n, K) targets: exp(scores) scaled alternately so that each of the K
  columns sums to n / K and each row to 1 (the last scaling: rows sum to 1 exactly), as
  DINOv2's SinkhornKnoppTeacher (which runs over the batch, per device)."""
  n, k = scores.shape
  q = jnp.exp(scores - jnp.max(scores))
  q = q / jnp.sum(q)
  for _ in range(iters):
    q = q / jnp.sum(q, axis=0, keepdims=True) / k
    q = q / jnp.sum(q, axis=1, keepdims=True) / n
  return q * n


def koleo_loss(x, eps: float = 1e-8):
  """(n, d) -> -mean_i log ||x_i - x_nn(i)|| over L2-normalised rows, nn(i) the nearest
  other row (Sablayrolles et al. 2019, as DINOv2)."""
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  dots = x @ x.T
  dots = jnp.where(jnp.eye(x.shape[0], dtype=bool), -jnp.inf, dots)
  nn_idx = jnp.argmax(dots, axis=-1)
  dist = jnp.linalg.norm(x - x[nn_idx] + eps, axis=-1)  # DINOv2 uses PairwiseDistance(eps).
  return -jnp.mean(jnp.log(dist + eps))


@OBJECTIVES.register("dino")
@dataclasses.dataclass(frozen=True)
class Dino:
  student_temp: float = 0.1
  teacher_temp: float = 0.04         # After the warm-up (if any).
  warmup_teacher_temp: float | None = None  # Teacher temperature at step 0 (None: teacher_temp).
  warmup_teacher_temp_steps: int = 0  # Linear warm-up steps of the teacher temperature; 0: none.
  teacher_momentum: float = 0.996     # At step 0; cosine to 1 at total_steps.
  center_momentum: float = 0.9
  total_steps: int = 0                # Of the momentum schedule; the run's when not set.
  centering: str = "ema"              # "ema" (subtract the centre) | "sinkhorn".
  sinkhorn_iters: int = 3
  koleo_weight: float = 0.0

  def __post_init__(self):
    for name in ("teacher_momentum", "center_momentum"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"config.objective.{name}={getattr(self, name)} must be in [0, 1].")
    if self.student_temp <= 0 or self.teacher_temp <= 0:
      raise ValueError("config.objective.student_temp and teacher_temp must be > 0.")
    if self.centering not in ("ema", "sinkhorn"):
      raise ValueError(f"config.objective.centering={self.centering!r}: valid: 'ema', "
                       "'sinkhorn'.")
    if self.koleo_weight < 0:
      raise ValueError("config.objective.koleo_weight must be >= 0.")
    if self.warmup_teacher_temp_steps < 0 or (self.warmup_teacher_temp is not None
                                              and self.warmup_teacher_temp <= 0):
      raise ValueError("config.objective.warmup_teacher_temp_steps must be >= 0 and "
                       "warmup_teacher_temp > 0.")

  def _temp_warmup(self) -> bool:
    return self.warmup_teacher_temp_steps > 0

  def _temp_at(self, step):
    start = self.teacher_temp if self.warmup_teacher_temp is None else self.warmup_teacher_temp
    return teacher_temp_at(step, start, self.teacher_temp, self.warmup_teacher_temp_steps)

  def init_inputs(self, batch):
    return (batch["crops_global"][:, 0],)

  def init_state(self, params):
    """{"teacher": a copy of the student's params (same tree, same logical axes),
    "center": zeros (out_dim,)}, and with a temperature warm-up "teacher_temp" (the
    temperature of step 0)."""
    out_dim = nn.unbox(params["student"]["head"]["last_layer"]).shape[-1]
    state = {"teacher": jax.tree.map(jnp.copy, params),
             "center": jnp.zeros((out_dim,), jnp.float32)}
    if self._temp_warmup():
      state["teacher_temp"] = jnp.asarray(self._temp_at(0), jnp.float32)
    return state

  def eval_params(self, params, objective_state):
    """Evaluators probe the teacher."""
    del params
    return objective_state["teacher"]

  def loss(self, model, params, batch, rng, *, train: bool = True, objective_state):
    if "crops_global" not in batch:
      raise ValueError("The dino objective needs batches with `crops_global` (and optionally "
                       "`crops_local`): put multi_crop(...) in config.data.train.pp.")
    apply = lambda x, **kw: model.apply({"params": params}, x, **kw)
    glob = _crop_major(batch["crops_global"])
    n_global, b = batch["crops_global"].shape[1], batch["crops_global"].shape[0]
    out, feats = apply(glob, train=train, rngs={"dropout": rng}, with_features=True)
    student = [out]
    if "crops_local" in batch:
      student.append(apply(_crop_major(batch["crops_local"]), train=train,
                           rngs={"dropout": jax.random.fold_in(rng, 1)}))
    student = jnp.concatenate(student).astype(jnp.float32)
    student = jax.nn.log_softmax(student / self.student_temp, axis=-1)
    student = student.reshape((-1, b) + student.shape[1:])          # (crops, b, K)

    teacher = jax.lax.stop_gradient(model.apply(
        {"params": objective_state["teacher"]}, glob).astype(jnp.float32))
    t_temp = (jax.lax.stop_gradient(objective_state["teacher_temp"])
              if "teacher_temp" in objective_state else self.teacher_temp)
    if self.centering == "sinkhorn":
      t_probs = sinkhorn_knopp(teacher / t_temp, self.sinkhorn_iters)
    else:
      center = jax.lax.stop_gradient(objective_state["center"])
      t_probs = jax.nn.softmax((teacher - center) / t_temp, axis=-1)
    t_probs = t_probs.reshape((n_global, b) + t_probs.shape[1:])

    total, terms = 0.0, 0
    for i in range(n_global):
      for v in range(student.shape[0]):
        if v != i:   # The student never sees the teacher's own view.
          total += -jnp.mean(jnp.sum(t_probs[i] * student[v], axis=-1))
          terms += 1
    loss = total / terms
    metrics = {}
    if self.koleo_weight:
      feats = feats.astype(jnp.float32).reshape((n_global, b) + feats.shape[1:])
      koleo = jnp.mean(jax.vmap(koleo_loss)(feats))
      loss = loss + self.koleo_weight * koleo
      metrics["koleo"] = koleo
    entropy = -jnp.mean(jnp.sum(t_probs * jnp.log(t_probs + 1e-12), axis=-1))
    if "teacher_temp" in objective_state:
      metrics["teacher_temp"] = t_temp
    return loss, Aux(metrics={"teacher_entropy": entropy, **metrics},
                     update_inputs={"center": jnp.mean(teacher, axis=0)})

  def update_state(self, objective_state, old_params, new_params, update_inputs, step):
    del old_params
    m = teacher_momentum(step, self.teacher_momentum, self.total_steps)
    c = self.center_momentum
    out = {"teacher": _ema(objective_state["teacher"], new_params, m),
           "center": _ema(objective_state["center"], update_inputs["center"], c)}
    if "teacher_temp" in objective_state:   # The temperature of the next step, step + 1.
      out["teacher_temp"] = jnp.asarray(self._temp_at(step + 1), jnp.float32)
    return out
