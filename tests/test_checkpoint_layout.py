"""A checkpoint of the train-state layout before `objective_state` (DINO's teacher and centre
in params) is refused on resume with a message that says so, and is left where it is."""

import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigvl import checkpoint, init_from, config_lib

pytestmark = pytest.mark.unit


def _old_dino_state():
  # What bigvl wrote before the objective-state slot: teacher and centre among the params.
  net = {"backbone": {"embedding": {"kernel": jnp.ones((2, 3))}}, "head": {"w": jnp.ones(3)}}
  return {"step": jnp.asarray(10, jnp.int32), "rng": jnp.zeros((2,), jnp.uint32),
          "params": {"student": net, "teacher": net_like(net, 2.0),
                     "center": jnp.zeros(3)},
          "opt_state": {}, "skipped_steps": jnp.zeros((), jnp.int32)}


def net_like(net, value):
  return {"backbone": {"embedding": {"kernel": jnp.full((2, 3), value)}},
          "head": {"w": jnp.full(3, value)}}


def test_old_layout_is_refused_with_a_message_and_not_moved(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(10, _old_dino_state(), ml_collections.ConfigDict(dict(note="old")))
  ckpt.wait()
  new_state = {"step": jnp.zeros((), jnp.int32), "params": {}, "objective_state": {}}
  with pytest.raises(checkpoint.LayoutError, match="older bigvl.*objective_state.*init_from"):
    ckpt.restore_latest(new_state, None)
  with pytest.raises(checkpoint.LayoutError, match="older bigvl"):
    ckpt.restore(10, new_state, None)
  # Not damaged: still in place, nothing moved aside.
  assert ckpt.all_steps() == [10]
  assert not os.path.exists(tmp_path / "corrupt_checkpoints")
  ckpt.close()


def test_old_dino_teacher_still_starts_a_new_student(tmp_path):
  """The refusal's advice works: init_subtree=teacher, init_into=student loads the teacher."""
  ckpt = checkpoint.Checkpointer(str(tmp_path / "old"), async_save=False)
  ckpt.save(10, _old_dino_state(), ml_collections.ConfigDict(dict(note="old")))
  ckpt.wait()
  ckpt.close()
  config = config_lib.with_defaults(ml_collections.ConfigDict(dict(
      init_from=str(tmp_path / "old"), init_subtree="teacher", init_into="student")))
  params = {"student": net_like(None, 0.0)}
  merged, report = init_from.params_from(config, params)
  np.testing.assert_array_equal(merged["student"]["head"]["w"], 2.0)
  assert sorted(report["loaded"]) == ["student/backbone/embedding/kernel", "student/head/w"]
