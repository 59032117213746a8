"""The SigLIP demo trains identically with the Pallas attention and loss kernels.

Both towers' attention (encoder blocks and the MAP head) and the sigmoid loss run through
Pallas (the interpreter on this CPU); five steps must match the XLA path within 1e-4.
The fast test drives bigvl.state / bigvl.step on real digits; the slow one runs the whole
`train_and_evaluate` loop (data pipeline, tokenizer, metrics.jsonl) twice.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from digit_batches import digit_batches
import pytest

from bigvl import config_lib, metrics, models, objectives, optim, train
from bigvl import sharding as sh
from bigvl import state as state_lib
from bigvl import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 5


def _train_losses(workdir, attention_impl: str, loss_impl: str) -> list[float]:
  config = config_lib.load_config_file(
      os.path.join(ROOT, "configs/demo/siglip_digits.py") + f":steps={STEPS},batch=32")
  config.log_every = 1
  config.eval_every = 0
  config.checkpoint_every = 0
  config.evals = {}
  config.model.image.attention_impl = attention_impl
  config.model.text.attention_impl = attention_impl
  config.objective.loss_impl = loss_impl
  train.train_and_evaluate(config, str(workdir))
  rows = [r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "train/loss" in r]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  return [r["train/loss"] for r in rows]


def _demo_config(steps=STEPS, batch=32):
  config = config_lib.load_config_file(
      os.path.join(ROOT, "configs/demo/siglip_digits.py") + f":steps={steps},batch={batch}")
  config.model.text.vocab_size = 64
  return config


# This test measures agreement, not XLA's code quality: skipping LLVM's expensive passes
# halves the CPU compile time and applies to both paths alike.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compiled(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST_COMPILE)


@pytest.mark.integration
@pytest.mark.slow
def test_siglip_train_steps_pallas_match_xla():
  config = _demo_config()
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  batches = jax.tree.map(jnp.asarray, digit_batches(STEPS, config.batch_size, config.data.text_len, 64))
  mesh = sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  rules = sh.get_rules(config.sharding.rules)

  def build(impl, loss_impl):
    model_cfg = config.model.to_dict()
    model_cfg["image"]["attention_impl"] = impl
    model_cfg["text"]["attention_impl"] = impl
    model = models.build(model_cfg)
    objective = objectives.build(dict(config.objective.to_dict(), loss_impl=loss_impl))
    return model, objective

  model_x, objective_x = build("xla", "xla")
  model_p, objective_p = build("pallas", "pallas")

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # Parameters do not depend on the attention implementation: one init serves both.
    batch_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batches[0])
    if hasattr(state_lib, "init_fn"):  # bigvl.state.create's init, compiled the fast way.
      key = jax.random.PRNGKey(config.seed)
      state0 = _compiled(state_lib.init_fn(model_x, objective_x, tx, batch_spec), key)(key)
    else:
      state0, _ = state_lib.create(model_x, objective_x, tx, batch_spec, config.seed, mesh,
                                   rules)
    losses, params = {}, {}
    for name, model, objective in (("xla", model_x, objective_x),
                                   ("pallas", model_p, objective_p)):
      step_fn = _compiled(functools.partial(step_lib.train_step, model=model,
                                            objective=objective, tx=tx, schedule=schedule),
                          state0, batches[0])
      state, losses[name] = state0, []
      for batch in batches:
        state, m = step_fn(state, batch)
        losses[name].append(float(m.metrics["train/loss"]))
      params[name] = nn.unbox(state.params)
  assert np.all(np.isfinite(losses["xla"]))
  assert abs(losses["xla"][-1] - losses["xla"][0]) > 1e-3
  np.testing.assert_allclose(losses["pallas"], losses["xla"], atol=1e-4, rtol=0)
  # After 5 updates the parameters agree too: the kernels' gradients drove the same path.
  for a, b in zip(jax.tree.leaves(params["xla"]), jax.tree.leaves(params["pallas"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


@pytest.mark.integration
@pytest.mark.slow
def test_siglip_demo_pallas_matches_xla(tmp_path):
  xla = _train_losses(tmp_path / "xla", "xla", "xla")
  pallas = _train_losses(tmp_path / "pallas", "pallas", "pallas")
  assert np.all(np.isfinite(xla))
  # The loss moves, so agreement over 5 steps also checks the gradients the kernels feed
  # into the optimizer, not only the first forward pass.
  assert abs(xla[-1] - xla[0]) > 1e-3
  np.testing.assert_allclose(pallas, xla, atol=1e-4, rtol=0)


@pytest.mark.unit
def test_attention_impl_reaches_every_attention():
  """A bad attention_impl must fail in every attention the model has (no hard-coded impl)."""
  config = _demo_config()
  seen = []
  from bigvl.kernels import attention as attention_lib
  real = attention_lib.attention

  def spy(q, k, v, *, impl="xla", **kw):
    seen.append((impl, q.shape[1], k.shape[1]))
    return real(q, k, v, impl="xla", **kw)

  attention_lib.attention = spy
  try:
    config.model.image.attention_impl = "pallas"
    config.model.text.attention_impl = "pallas"
    model = models.build(config.model)
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 16, 16, 1)),
                   jnp.zeros((2, 16), jnp.int32))
  finally:
    attention_lib.attention = real
  # 2 image blocks + MAP head (1 query) + 2 text blocks, all asked for pallas.
  assert len(seen) == 5, seen
  assert {impl for impl, _, _ in seen} == {"pallas"}
  assert any(lq == 1 for _, lq, _ in seen)
