"""Flamingo stage 2 through the train step: only the bridges move, only they have optimizer
state, and the loss counts text tokens only."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigvl import models, objectives, optim, state as state_lib, step as step_lib
from bigvl.data import sources, tokenizer as tok_lib, transforms
from bigvl.data.interleaved import IMAGE, SPECIAL_TOKENS
from bigvl.objectives.language import next_token_loss

TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=4)


@functools.cache
def _setup():
  src = sources.build(dict(name="interleaved", inner=dict(name="digits", split="train"),
                           k=3, size=64))
  tok = tok_lib.train(src.texts(), 128, special_tokens=SPECIAL_TOKENS)
  pp = transforms.build("each_image('resize(16)|value_range(-1, 1)')|interleave_text|tokenize|"
                        "keep('images', 'text')", tokenizer=tok, text_len=32)
  exs = [pp(src[i], np.random.default_rng(i)) for i in range(8)]
  batch = {k: jnp.asarray(np.stack([e[k] for e in exs])) for k in exs[0]}
  model = models.build(dict(
      name="flamingo", vision=dict(TINY, patch_size=4), lm=dict(TINY, vocab_size=tok.vocab_size,
                                                                 max_len=32),
      resampler=dict(depth=1, num_latents=4, num_heads=4, mlp_dim=64),
      xattn=dict(num_heads=4, mlp_dim=64), cross_every=1, image_token_id=tok.piece_id(IMAGE)))
  objective = objectives.build(dict(name="flamingo"))
  cfg = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-2, schedule="constant", warmup_steps=0, min_lr_ratio=0.0, b1=0.9,
      b2=0.999, weight_decay=0.1, wd_pattern=r".*/kernel$", grad_clip=1.0, frozen_pattern=""))
  tx, schedule = optim.make_optimizer(cfg, 100, frozen=objective.frozen_params)
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  # unsafe_rbg: compiling the init with the default threefry key took ~20 s of CPU.
  state = jax.jit(state_lib.init_fn(model, objective, tx, spec))(
      jax.random.key(0, impl="unsafe_rbg"))
  return model, objective, tx, schedule, state, batch, tok


def _np(tree):
  return jax.tree.map(np.asarray, nn.unbox(tree))


@pytest.mark.integration
@pytest.mark.slow  # Over 10 s on 2 cores: the default suite stays under 10 minutes.
def test_stage_two_moves_only_the_bridges_and_allocates_only_their_moments():
  model, objective, tx, schedule, state, batch, _ = _setup()
  before = _np(state.params)
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=model, objective=objective,
                                                  tx=tx, schedule=schedule))
  losses = []
  for _ in range(5):
    state, metrics = step(state, batch)
    losses.append(float(metrics.metrics["train/loss"]))
  after = _np(state.params)
  frozen, trained = ("vision", "lm"), sorted(set(after) - {"vision", "lm"})
  assert trained and all(k == "resampler" or k.startswith("xattn") for k in trained), trained
  for name in frozen:  # Bit for bit.
    jax.tree.map(np.testing.assert_array_equal, after[name], before[name])
  for name in trained:
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after[name]),
                                                      jax.tree.leaves(before[name]))]
    assert all(moved), (name, moved)
  assert losses[-1] < losses[0]
  # Optimizer state: Adam's two moments of the trained params, nothing for the frozen ones.
  n_trained = sum(x.size for k in trained for x in jax.tree.leaves(after[k]))
  n_state = sum(x.size for x in jax.tree.leaves(nn.unbox(state.opt_state))
                if jnp.issubdtype(x.dtype, jnp.floating))  # Not Adam's int step count.
  assert n_state == 2 * n_trained


@pytest.mark.integration
@pytest.mark.slow  # Over 15 s: keeps the default run near 10 minutes; CI runs it.
def test_loss_counts_text_tokens_not_image_markers_or_padding():
  model, objective, _, _, state, batch, tok = _setup()
  loss, _ = objective.loss(model, state.params, batch, jax.random.PRNGKey(0), train=False)
  logits = model.apply({"params": state.params}, batch["images"], batch["text"])
  image_id = tok.piece_id(IMAGE)
  ref, _ = next_token_loss(logits, batch["text"], ignore_ids=(image_id,))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  # Changing the logits that predict image markers (or padding) changes nothing.
  tgt = np.asarray(batch["text"])[:, 1:]
  hide = np.zeros(logits.shape[:2], bool)
  hide[:, :-1] = (tgt == image_id) | (tgt == tok.pad_id)
  assert hide.any()
  noisy = jnp.where(hide[..., None], logits + 100 * jax.random.normal(
      jax.random.PRNGKey(1), logits.shape), logits)
  same, _ = next_token_loss(noisy, batch["text"], ignore_ids=(image_id,))
  assert float(same) == float(ref)


@pytest.mark.unit
def test_a_run_with_frozen_params_restores_from_its_checkpoint(tmp_path):
  # Frozen params have no optimizer state (optax.MaskedNode leaves); restoring into the
  # abstract state, as resume and `python -m bigvl.eval` do, once failed on them.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from bigvl import checkpoint as ckpt_lib
  model, objective, tx, schedule, state, batch, _ = _setup()
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, state, ml_collections.ConfigDict(dict(note="test")))
  ckpt.wait()
  replicated = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), P())
  shapes = jax.eval_shape(lambda: state)
  shardings = jax.tree.map(lambda x: replicated, shapes,
                           is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  restored = ckpt.restore(1, shapes, shardings)
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, _np(restored.params), _np(state.params))
  jax.tree.map(np.testing.assert_array_equal, _np(restored.opt_state), _np(state.opt_state))
