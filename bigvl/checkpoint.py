"""Orbax checkpoints of the train state (+ the resolved config), resume, params-only init.

Orbax writes each step into a temporary directory and renames it when complete, so a
checkpoint is visible only once whole and a run killed mid-save leaves the previous ones
as they were. Each step also holds every process's grain iterator state (item `data`,
one JSON file per process, grain's own orbax handler), taken when the step's batch had
been consumed; the RNG is part of the train state.
"""

from __future__ import annotations

import json
import re
import sys
import time

import flax
import flax.linen as nn
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from bigvl import checkpoint_checksums as checksums
from bigvl import state as state_lib
from bigvl import storage
from bigvl.models import layer_scan
from bigvl.optim import path_str

class LayoutError(ValueError):
  """A checkpoint holds a train state of another layout than this bigvl's; it is left where
  it is, and the message says how to use it."""


# Where orbax-checkpoint can write arrays: local paths and gs:// (its tensorstore specs
# know no other store; s3:// fails inside its save).
SCHEMES = (None, "gs")


def check_location(workdir: str) -> None:
  """ValueError, before anything is written, for a workdir orbax cannot checkpoint into."""
  kind = storage.scheme(workdir)
  if kind not in SCHEMES:
    raise ValueError(f"--workdir {workdir!r}: orbax-checkpoint writes checkpoints to local "
                     f"paths and gs:// only, not {kind}://. Put the workdir on gs:// or a "
                     "local/network disk; data, tokenizers and init_from can stay on "
                     f"{kind}:// (docs/storage.md).")


def describe_failure(e: BaseException, limit: int = 300) -> str:
  """`Type: message` of the innermost exception `e` was raised from, on one line: what
  orbax and tensorstore wrap (which file, which byte range) without their boilerplate, and
  the system's reason that tensorstore puts at the end of a long message
  ("... No space left on device [os_error_code='28']")."""
  seen = set()
  while id(e) not in seen and (e.__cause__ or e.__context__) is not None:
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  text = str(e).strip()
  lines = text.splitlines()
  first = lines[0].split(" See full TensorStore details")[0][:limit] if lines else ""
  os_error = re.search(r":\s*([^:\[\]\n]+?)\s*\[os_error_code=", text)
  if os_error and os_error.group(1).strip() not in first:
    first = first[:max(limit - 60, 0)] + f" ... {os_error.group(1).strip()}"
  return f"{type(e).__name__}: {first}" if first else type(e).__name__


class DamagedError(RuntimeError):
  """A checkpoint's files differ from what was saved (checksums); handled as unreadable."""


class SaveError(RuntimeError):
  """Writing a checkpoint failed; the message names the cause and the last good one."""


class MismatchError(LayoutError):
  """A readable checkpoint whose arrays have other shapes than the run's: left where it is."""


def _shapes(tree) -> dict[str, tuple]:
  """{"/"-joined path: shape} of the array leaves of a nested dict (metadata or arrays)."""
  out = {}
  for p, leaf in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))[0]:
    if isinstance(leaf, nn.meta.AxisMetadata):
      leaf = leaf.unbox()
    if hasattr(leaf, "shape"):
      out[path_str(p)] = tuple(leaf.shape)
  return out


def _key_paths(tree) -> list[str]:
  """The paths of the typed PRNG-key leaves of `tree`."""
  out = []
  for p, leaf in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))[0]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      out.append(path_str(p))
  return out


class Checkpointer:
  """Saves and restores `TrainState` under `workdir/checkpoints/<step>`."""

  def __init__(self, workdir: str, keep: int = 3, keep_every: int = 0, async_save: bool = True):
    check_location(workdir)
    self.workdir = storage.abspath(workdir)
    self.directory = storage.join(self.workdir, "checkpoints")
    self._saving: int | None = None  # The step whose save may still be in flight.
    self.manager = ocp.CheckpointManager(
        storage.epath(self.directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every or None,
                                             create=True, enable_async_checkpointing=async_save),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, config, data_state: dict | None = None) -> None:
    """Saves `state`, the config and (if given) this process's data iterator state."""
    items = dict(state=ocp.args.StandardSave(state),
                 config=ocp.args.JsonSave(json.loads(config.to_json())))
    if data_state is not None:
      # A snapshot, not the live iterator: an async save must not see later batches.
      items["data"] = grain.checkpoint.CheckpointSave(_DataState(data_state))
    self.wait()  # Orbax waits for the previous save anyway; its checksums come first.
    self._saving = step
    try:
      self.manager.save(step, args=ocp.args.Composite(**items))
    except Exception as e:  # The synchronous part (directory creation) failed.
      raise SaveError(self._failure(e)) from e
    self.poll()

  def poll(self) -> None:
    """Called every step: SaveError if an asynchronous save has failed; once a save has
    been committed, its files' checksums (checkpoint_checksums.py)."""
    self.raise_failed_save()
    if self._saving is not None and not self.manager.is_saving_in_progress():
      # The save's threads are done: joining them is instant, and it is the only place
      # orbax reports a failed write. Its finalize thread takes the writer's error off the
      # checkpointer (check_for_errors then sees nothing), so without this join a failed
      # save surfaced only at the next save, one checkpoint interval late.
      self.wait()

  def _write_checksums(self) -> None:
    step, self._saving = self._saving, None
    if step is None or jax.process_index() != 0 or step not in self.manager.all_steps():
      return
    try:
      checksums.write(storage.join(self.directory, str(step)))
    except OSError as e:  # A full disk shows in the next save's error; the step stays usable.
      print(f"WARNING: checksums of checkpoint {step} not written ({e}); it will be restored "
            "unverified.", file=sys.stderr, flush=True)

  def check_layout(self, step: int) -> None:
    """Raises LayoutError when checkpoint `step` was written with an older train-state
    layout (before `objective_state`: DINO's teacher and centre were params then).
    A checkpoint whose metadata cannot be read at all is left to `restore` to report."""
    try:
      tree = self.manager.item_metadata(step)["state"].tree
    except Exception:  # Unreadable metadata: damaged, handled as such by the caller.
      return
    if isinstance(tree, dict) and state_lib.LAYOUT_FIELD not in tree:
      path = storage.join(self.directory, str(step))
      raise LayoutError(
          f"Checkpoint {path} has the train-state layout of an older bigvl (no "
          f"'{state_lib.LAYOUT_FIELD}'; e.g. DINO's teacher and centre stored as params), "
          "which this version cannot resume. Resume it with the bigvl version that wrote it, "
          f"or start a new run in another workdir from its params with "
          f"--config.init_from={path} (params-only; an old DINO run's teacher loads as the "
          "new student with --config.init_subtree=teacher --config.init_into=student).")

  def check_shapes(self, step: int, state) -> None:
    """MismatchError when checkpoint `step` holds arrays of other shapes (or another tree)
    than `state`: a readable checkpoint of another model, never a damaged one. Unreadable
    metadata is left to `restore` to report."""
    try:
      saved = self.manager.item_metadata(step)["state"].tree
    except Exception:  # Damaged: handled as such by the caller.
      return
    target = flax.serialization.to_state_dict(state)
    want, have = _shapes(target), _shapes(saved)
    # A PRNG key is stored as its raw data (another shape); orbax converts it back.
    for key in _key_paths(target):
      want.pop(key, None)
      have.pop(key, None)
    diff = [f"{k}: saved {have[k]}, now {want[k]}" for k in sorted(set(have) & set(want))
            if have[k] != want[k]]
    missing = sorted(set(want) - set(have))
    if diff or missing:
      path = storage.join(self.directory, str(step))
      what = "; ".join(diff[:3] + [f"{k}: not in the checkpoint" for k in missing[:3]])
      raise MismatchError(
          f"Checkpoint {path} holds another model's arrays ({len(diff) + len(missing)} "
          f"differ, e.g. {what}); it is left as it is. Resume it with the config that wrote "
          "it, or start a new run in another --workdir (--config.init_from=" + path +
          " loads the params that fit).")

  def restore(self, step: int, state, shardings):
    """Restores `step` into arrays with the shapes and shardings of `state`/`shardings`;
    LayoutError for a checkpoint of an older layout, MismatchError for one of other shapes."""
    # The train state's files; a damaged data-iterator state only costs re-indexing the
    # stream (restore_data_state), not the checkpoint.
    damage = checksums.verify(storage.join(self.directory, str(step)), within="state")
    if damage is not None:
      raise DamagedError(f"checksum mismatch: {damage}")
    self.check_layout(step)
    self.check_shapes(step, state)
    target = state_lib.abstract_like(state, shardings)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return restored.state

  def restore_data_state(self, step: int) -> dict | None:
    """This process's data iterator state at `step`; None if the checkpoint has none for a
    run of this many processes (saved before data states existed, or by another process
    count), in which case the loader indexes its stream at the step instead."""
    path = storage.join(self.directory, str(step), "data",
                        f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    if not storage.exists(path):
      return None
    damage = checksums.verify(storage.join(self.directory, str(step)), within="data")
    if damage is not None:
      raise DamagedError(f"checksum mismatch: {damage}")
    holder = _DataState(None)
    self.manager.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(holder)))
    return holder.state

  def restore_latest(self, state, shardings):
    """(state, step) from the newest checkpoint that reads back whole; (state, 0) if none.

    An unreadable checkpoint (truncated, corrupt) is reported with its path and moved
    aside to `workdir/corrupt_checkpoints/`, never deleted; the next older one is tried.
    """
    for step in reversed(self.all_steps()):
      # A checkpoint of another layout or model is not damaged: never moved. (Checked after
      # the checksums: damaged metadata must not read as another model.)
      if checksums.verify(storage.join(self.directory, str(step)), within="state") is None:
        self.check_layout(step)
        self.check_shapes(step, state)
      try:
        return self.restore(step, state, shardings), step
      except Exception as e:  # Orbax/tensorstore raise many types for damaged files.
        path = storage.join(self.directory, str(step))
        aside = storage.join(self.workdir, "corrupt_checkpoints", f"{step}-{int(time.time())}")
        if jax.process_index() == 0:
          storage.makedirs(storage.dirname(aside))
          storage.move(path, aside)  # On a store: copied, then deleted (docs/storage.md).
        print(f"WARNING: checkpoint {path} cannot be restored ({describe_failure(e)}). Moved "
              f"it to {aside}; trying the previous checkpoint.", file=sys.stderr, flush=True)
        self.manager.reload()
    return state, 0

  def raise_failed_save(self) -> None:
    """SaveError, with the cause on one line, if an asynchronous save has failed (a full
    disk, a read-only or vanished directory); cheap: it only looks at the finished saves."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # Orbax re-raises the writer thread's error as it was.
      raise SaveError(self._failure(e)) from e

  def _failure(self, e: BaseException) -> str:
    try:
      good = self.manager.latest_step()
    except Exception:
      good = None
    which = f"of step {self._saving} " if self._saving is not None else ""
    self._saving = None  # Reported: a later wait() must not write checksums for it.
    return (f"A checkpoint save {which}failed ({describe_failure(e)}); the run stops here. The "
            f"last good checkpoint is step {good} in {self.directory}. Fix the cause (space, "
            "permissions) and run the same command to resume from it.")

  def wait(self) -> None:
    """Waits for the save in flight (SaveError if it failed) and writes its checksums."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise SaveError(self._failure(e)) from e
    self._write_checksums()

  def close(self) -> None:
    self.manager.close()


class _DataState:
  """Holds an iterator state for grain's checkpoint handler, which calls get/set_state."""

  def __init__(self, state):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state, indent=1).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state)

  def start_prefetch(self) -> None:  # Called by the handler after set_state.
    pass


def checkpoint_dir(path: str) -> tuple[str, int]:
  """A workdir, its checkpoints dir, or one step's dir -> (checkpoints dir, step)."""
  path = storage.abspath(path)
  if storage.isdir(storage.join(path, "checkpoints")):
    path = storage.join(path, "checkpoints")
  if storage.basename(path).isdigit() and storage.isdir(storage.join(path, "state")):
    return storage.dirname(path), int(storage.basename(path))
  # A step's directory counts once orbax has committed it (on a store: its success marker).
  steps = [int(n) for n in storage.listdir(path)
           if n.isdigit() and storage.isdir(storage.join(path, n, "state"))]
  if not steps:
    raise FileNotFoundError(f"No checkpoint found at {path!r}: give a workdir, its "
                            "checkpoints/ directory, or one checkpoints/<step> directory.")
  return path, max(steps)


def load_params(path: str, *, objective_state: bool = False) -> dict[str, np.ndarray]:
  """Params of a checkpoint as {"/"-joined path: array}, on the host, whatever mesh saved it.

  `path` is a training run (workdir, its checkpoints/ or one step's dir) or a converted
  checkpoint (tools/convert_checkpoint.py: config.json + params/), e.g. HF GPT-2 to start
  a Flamingo's `lm/` from. With `objective_state`, a training run's objective state comes
  too, under `objective_state/` (DINO's teacher: `objective_state/teacher/...`).
  """
  converted = storage.join(storage.abspath(path), "params")
  if storage.isdir(converted) and storage.exists(storage.join(path, "config.json")):
    params = restore_on_one_device(converted)
  else:
    directory, step = checkpoint_dir(path)
    saved = restore_on_one_device(storage.join(directory, str(step), "state"))
    params = saved["params"]
    if objective_state and saved.get("objective_state"):
      params = {**params, "objective_state": saved["objective_state"]}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  out = {}
  for p, leaf in flat:
    key = path_str(p)
    key = key[:-len("/value")] if key.endswith("/value") else key  # A saved logical box.
    out[key] = np.asarray(leaf)
  return out


def restore_on_one_device(path: str):
  """The pytree an orbax StandardCheckpointer saved at `path`, restored onto this process's
  first device whatever mesh and process count saved it (orbax, left to itself, rebuilds
  the saved sharding and fails on another topology)."""
  ckptr = ocp.StandardCheckpointer()
  where = storage.epath(path)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
      if hasattr(m, "shape") and hasattr(m, "dtype") else m,
      ckptr.metadata(where).item_metadata)
  return ckptr.restore(where, target)


def subtree(loaded: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """The params under `prefix` ("enc", "teacher/backbone"), with the prefix removed."""
  prefix = prefix.strip("/")
  out = {k[len(prefix) + 1:]: v for k, v in loaded.items() if k.startswith(prefix + "/")}
  if not out:
    tops = sorted({k.split("/")[0] for k in loaded})
    raise ValueError(f"config.init_subtree={prefix!r} matches no param of the checkpoint; "
                     f"its top-level names are {tops}.")
  return out


def merge_params(params, loaded: dict[str, np.ndarray]):
  """Replaces every param of `params` whose path and shape match one in `loaded`.

  Encoder blocks are stacked or unstacked first where `loaded` and `params` differ in layer
  scanning (`models.layer_scan.match_layout`). Returns (params, report) with report lists `loaded`, `new` (kept at init), `mismatched`
  (same path, other shape: kept at init) and `dropped` (in the checkpoint only).
  """
  report = {"loaded": [], "new": [], "mismatched": [], "dropped": []}
  seen = set()
  # A scanned encoder loads an unscanned one's blocks and vice versa: same numbers.
  target = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))[0]]
  loaded = layer_scan.match_layout(loaded, target)

  def one(p, x):
    key = path_str(p)
    value = x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x
    if key not in loaded:
      report["new"].append(key)
      return x
    seen.add(key)
    if loaded[key].shape != value.shape:
      report["mismatched"].append(f"{key} {tuple(loaded[key].shape)} -> {tuple(value.shape)}")
      return x
    report["loaded"].append(key)
    new = jax.device_put(loaded[key].astype(value.dtype), value.sharding)
    return x.replace_boxed(new) if isinstance(x, nn.meta.AxisMetadata) else new

  merged = jax.tree_util.tree_map_with_path(
      one, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  report["dropped"] = sorted(set(loaded) - seen)
  return merged, report
