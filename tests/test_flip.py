"""FLIP: the two-tower objectives with image masking encode fewer tokens, cost measurably
fewer FLOPs (XLA's cost analysis of the compiled program), and evaluate unmasked."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from bigvl import config_lib, mfu, models, objectives
from conftest import REPO

FLIP = f"{REPO}/configs/demo/flip_digits.py"


def _demo(ratio):
  config = config_lib.load_config_file(f"{FLIP}:ratio={ratio}")
  model = models.build(dict(config.model.to_dict(), text=dict(config.model.text, vocab_size=96)))
  objective = objectives.build(config.objective)
  b = 8   # FLOPs scale with the batch; the ratios do not.
  batch = {"image": jnp.zeros((b, 16, 16, 1)), "text": jnp.ones((b, 16), jnp.int32)}
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["image"], batch["text"])["params"]
  return model, objective, params, batch


def _flops(fn, *args):
  return mfu.compiled_flops(jax.jit(fn).lower(*args).compile())


def _image_tower_flops(ratio):
  """Forward + backward of the image tower alone, as the objective runs it in training."""
  model, objective, params, batch = _demo(ratio)

  def tower_loss(img_params, rng):
    p = {**params, "img": img_params}
    zimg, _, _ = model.apply({"params": p}, batch["image"], None, **objective_kw(rng))
    return zimg.sum()

  def objective_kw(rng):
    if not ratio:
      return {}
    from bigvl.objectives.masking import random_keep
    return {"image_keep": random_keep(rng, batch["image"].shape[0], 16, ratio)[0]}

  return _flops(jax.grad(tower_loss), params["img"], jax.random.PRNGKey(0))


@pytest.mark.integration
@pytest.mark.slow
def test_masking_half_the_patches_cuts_image_tower_flops_at_least_1_6x():
  full, half = _image_tower_flops(0.0), _image_tower_flops(0.5)
  print(f"image tower fwd+bwd FLOPs: unmasked {full:.4g}, masked 0.5 {half:.4g}, "
        f"ratio {full / half:.2f}x")
  assert full / half >= 1.6


@pytest.mark.integration
@pytest.mark.slow
def test_masked_train_step_costs_fewer_flops_too():
  def step_flops(ratio):
    model, objective, params, batch = _demo(ratio)
    return _flops(jax.grad(lambda p, rng: objective.loss(model, p, batch, rng)[0]), params,
                  jax.random.PRNGKey(0))
  full, half = step_flops(0.0), step_flops(0.5)
  print(f"SigLIP demo loss fwd+bwd FLOPs: unmasked {full:.4g}, masked {half:.4g}, "
        f"ratio {full / half:.2f}x")
  assert full / half > 1.2    # The text tower is not masked.


@pytest.mark.integration
@pytest.mark.slow  # Over 15 s: keeps the default run near 10 minutes; CI runs it.
def test_image_tower_sees_half_the_tokens_in_training_and_all_in_eval():
  model, objective, params, batch = _demo(0.5)
  seen = []

  def spy(next_fun, args, kwargs, context):
    if context.module.name == "encoder" and context.method_name == "__call__" and \
        "img" in context.module.scope.path:
      seen.append(args[0].shape[1])
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(spy):   # Traced only: the spy sees the shapes.
    for train in (True, False):
      jax.eval_shape(lambda p: objective.loss(model, p, batch, jax.random.PRNGKey(0), train=train),
                     params)
  assert seen == [8, 16]


@pytest.mark.unit
def test_flip_tuning_phase_config_is_unmasked_from_the_masked_run(tmp_path):
  config = config_lib.load_config_file(f"{FLIP}:init={tmp_path}")
  assert config.objective.image_mask_ratio == 0.0 and config.init_from == str(tmp_path)
  assert config.data.tokenizer == f"{tmp_path}/tokenizer.model"


@pytest.mark.unit
def test_image_mask_ratio_is_validated():
  with pytest.raises(ValueError, match="Masking ratio"):
    objectives.build(dict(name="siglip", image_mask_ratio=1.0))
