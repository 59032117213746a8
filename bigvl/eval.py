"""Evaluates a saved checkpoint with its config's evaluators.

    python -m bigvl.eval --workdir DIR [--checkpoint STEP] [--config cfg.py] [--config.k=v ...]
    python -m bigvl.eval --workdir DIR --random_init    # The same evaluators on the init params.

Without --config, the run's own resolved config (`DIR/config.json`) is used, with the
tokenizer the run cached in DIR. Without --checkpoint, the newest checkpoint that reads back
(a damaged newer one is named on stderr and left where it is). Results are
printed, written to `DIR/eval_results/step_<STEP>.json`, and are the numbers the training
loop logs for that step (`eval/<name>/<metric>`).
"""

from __future__ import annotations

import json
import sys

import jax
import ml_collections
from absl import app, flags

from bigvl import checkpoint as ckpt_lib
from bigvl import config_lib, storage
from bigvl import run as run_lib
from bigvl import train

FLAGS = flags.FLAGS
flags.DEFINE_integer("checkpoint", None, "Step to evaluate; default: the newest checkpoint.")
flags.DEFINE_bool("random_init", False,
                  "Evaluate the config's randomly initialised params (its seed) instead of a "
                  "checkpoint: the baseline a probe of a self-supervised run is judged against. "
                  "Written to eval_results/random_init.json.")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to `workdir/config.json`."""
  path = storage.join(workdir, "config.json")
  if not storage.exists(path):
    raise config_lib.ConfigError(f"{path} not found: give --config, or a workdir written by "
                                 "python -m bigvl.train.")
  return ml_collections.ConfigDict(json.loads(storage.read_text(path)))


class DamagedCheckpointError(RuntimeError):
  """The checkpoint asked for (or every one) cannot be read back; eval only reads, so nothing
  is moved or deleted (the train loop moves a damaged one aside when it resumes)."""


def restore(config, workdir: str, step: int | None = None):
  """(run, step, train state) of checkpoint `step` (None: the newest) of the run in
  `workdir`, restored onto this process's mesh whatever mesh saved it.

  Without `step`, a newest checkpoint that cannot be read back (truncated, corrupt) is
  reported on stderr, one line, and the previous one is restored instead; with `step`, or
  when none reads back, DamagedCheckpointError names the checkpoint and its cause. Nothing
  is moved. A readable checkpoint that does not fit (checkpoint.LayoutError: an older
  train-state layout, or other shapes) is raised, never skipped.
  """
  run = run_lib.build(config, workdir)
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise config_lib.ConfigError(f"No checkpoint in {ckpt.directory}.")
    if step is not None and step not in steps:
      raise config_lib.ConfigError(f"No checkpoint for step {step} in {ckpt.directory}; "
                                   f"available: {steps}.")
    shapes, shardings = run.abstract_state()
    tried = [step] if step is not None else steps[::-1]
    for i, s in enumerate(tried):
      try:
        # Outside the mesh context: there a boxed abstract param would be sharding-constrained.
        return run, s, ckpt.restore(s, shapes, shardings)
      except ckpt_lib.LayoutError:
        raise
      except Exception as e:  # Orbax/tensorstore raise many types for damaged files.
        damaged = (f"checkpoint {s} ({storage.join(ckpt.directory, str(s))}) is damaged "
                   f"({ckpt_lib.describe_failure(e, limit=400)})")
        if step is not None:
          raise DamagedCheckpointError(
              f"{damaged}; nothing was evaluated. Give another --checkpoint (available: "
              f"{steps}), or none for the newest one that reads back.") from e
        if i + 1 == len(tried):
          raise DamagedCheckpointError(
              f"{damaged}: no checkpoint of {ckpt.directory} ({steps}) reads back; nothing "
              "was evaluated.") from e
        print(f"warning: {damaged}; evaluating the previous one, {tried[i + 1]}.",
              file=sys.stderr, flush=True)
  finally:
    ckpt.close()


def _with_evals(config):
  config = config_lib.with_defaults(config)
  if not config.evals:
    raise config_lib.ConfigError("config.evals is empty: nothing to evaluate.")
  return config


def evaluate(config, workdir: str, step: int | None = None) -> tuple[int, dict[str, float]]:
  """(step, {"eval/<name>/<metric>": value}) of checkpoint `step` (None: the newest)."""
  run, step, state = restore(_with_evals(config), workdir, step)
  return step, run.evaluate(state)


def evaluate_random_init(config, workdir: str) -> dict[str, float]:
  """{"eval/<name>/<metric>": value} of the params the run started from (before step 1)."""
  run = run_lib.build(_with_evals(config), workdir)
  state, _ = run.create_state()
  return run.evaluate(state)


def main(argv) -> int:
  try:
    spec, overrides, rest = config_lib.split_config_flags(argv)
    rest = FLAGS(rest)
    if not FLAGS.workdir:
      raise app.UsageError("--workdir is required.")
    if len(rest) > 1:
      raise app.UsageError(f"Unexpected arguments: {rest[1:]}")
    config = (config_lib.load_config_file(spec) if spec
              else load_run_config(FLAGS.workdir))
    config = config_lib.apply_overrides(config, overrides)
  except (config_lib.ConfigError, app.UsageError, flags.Error) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  train.init_distributed()
  try:
    if FLAGS.random_init:
      step, results = "random_init", evaluate_random_init(config, FLAGS.workdir)
    else:
      step, results = evaluate(config, FLAGS.workdir, FLAGS.checkpoint)
  except (config_lib.ConfigError, ckpt_lib.LayoutError, DamagedCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    name = "random_init.json" if FLAGS.random_init else f"step_{step}.json"
    out = storage.join(FLAGS.workdir, "eval_results", name)
    storage.makedirs(storage.dirname(out))
    storage.write(out, json.dumps({"step": step, **results}, indent=1))
    print(f"{step if FLAGS.random_init else f'step {step}'}: " +
          ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    print(f"Wrote {out}")
  return 0


def run():
  sys.exit(main(sys.argv))


if __name__ == "__main__":
  run()
