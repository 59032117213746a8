"""Orbax checkpoints of the train state (+ the resolved config), and resume.

Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoints as they were. The data stream needs
no state of its own: batch s is a function of (config, s) (see data/loader.py).
"""

from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp

from bigvl import state as state_lib


class Checkpointer:
  """Saves and restores `TrainState` under `workdir/checkpoints/<step>`."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, config) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(json.loads(config.to_json()))))

  def restore(self, step: int, state, shardings):
    """Restores `step` into arrays with the shapes and shardings of `state`/`shardings`."""
    target = state_lib.abstract_like(state, shardings)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return restored.state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
