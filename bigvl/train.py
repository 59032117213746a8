"""The single train loop and its CLI.

    python -m bigvl.train --config configs/demo/siglip_digits.py --workdir /tmp/siglip \
        [--config.total_steps=2000 ...]

Re-running the same command on the same workdir resumes from its newest checkpoint.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time

import flax.linen as nn
import jax
from absl import app, flags, logging
from jax.sharding import NamedSharding, PartitionSpec as P

from bigvl import checkpoint as ckpt_lib
from bigvl import mfu as mfu_lib
from bigvl import atomic_file
from bigvl import config_lib, metrics as metrics_lib, model_card, models, objectives, optim
from bigvl import sharding as sh
from bigvl import state as state_lib
from bigvl import step as step_lib
from bigvl import evaluators as eval_lib
from bigvl.data import loader, sources, tokenizer as tok_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and the tokenizer.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for a multi-process run started by hand (GPU "
                    "clusters, tests); with --num_processes and --process_id.")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() with the cluster's auto-detection "
                  "(TPU pods, SLURM, Open MPI): every host runs the same command.")
flags.DEFINE_integer("heartbeat_timeout_s", 30,
                     "A process that has not been heard from for this long is taken as dead, "
                     "and the others exit with an error instead of hanging.")


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); the message says why and what is kept."""


def _fill_vocab_size(node, vocab_size: int):
  """Sets every `vocab_size: None` in the model config to the tokenizer's size."""
  if isinstance(node, dict) or hasattr(node, "items"):
    for k, v in list(node.items()):
      if k == "vocab_size" and v is None:
        node[k] = vocab_size
      else:
        _fill_vocab_size(v, vocab_size)


# Model options named here, left None in the config, get the id of that tokenizer piece.
TOKEN_ID_OPTIONS = {"image_token_id": "<image>", "chunk_token_id": "<|endofchunk|>"}


def _fill_token_ids(node, tokenizer):
  if isinstance(node, dict) or hasattr(node, "items"):
    for k, v in list(node.items()):
      if k in TOKEN_ID_OPTIONS and v is None:
        node[k] = tokenizer.piece_id(TOKEN_ID_OPTIONS[k])
      else:
        _fill_token_ids(v, tokenizer)


def _tokenizer(config, workdir):
  train_source = sources.build(config.data.train) if config.data.train else None
  needs = "tokenize" in str(config.data.train.get("pp", "")) or any(
      e.get("type") == "zeroshot" for e in config.evals.values())
  if not needs:
    return None
  if not config.data.tokenizer and not hasattr(train_source, "texts"):
    raise config_lib.ConfigError(
        f"config.data.tokenizer is empty and source {config.data.train.source!r} has no captions "
        "to train one from: give a sentencepiece model path.")
  tok = tok_lib.get_or_train(config.data.tokenizer, workdir, lambda: train_source.texts(),
                             config.data.vocab_size, config.data.tokenizer_type,
                             tuple(config.data.special_tokens))
  if hasattr(train_source, "texts") and jax.process_index() == 0:
    # A caption cut short can lose the very word that names its class: say so loudly.
    frac = tok_lib.truncated_fraction(tok, train_source.texts()[:10_000], config.data.text_len)
    if frac > 0:
      print(f"WARNING: {frac:.1%} of training captions are longer than config.data.text_len="
            f"{config.data.text_len} tokens ({tok.source}) and will be truncated.", flush=True)
  return tok


def _check(config, mesh, rules) -> None:
  """Fails before compilation on settings that cannot work."""
  dp = sh.data_parallel_size(mesh, rules)
  if config.batch_size % dp:
    raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size} is not divisible by the data-parallel size {dp} "
        f"(mesh {dict(mesh.shape)}); use a multiple of {dp}.")
  k = config.grad_accum_steps
  if k < 1 or config.batch_size % (k * dp):
    raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size} must split into config.grad_accum_steps={k} "
        f"micro-batches that each divide over the data-parallel size {dp}: use a multiple of "
        f"{k * dp}.")
  if config.total_steps <= 0:
    raise config_lib.ConfigError(f"config.total_steps must be > 0, got {config.total_steps}.")
  if not config.data.train:
    raise config_lib.ConfigError("config.data.train is empty: set its source, split and pp.")
  if config.nonfinite not in ("stop", "skip"):
    raise config_lib.ConfigError(f"config.nonfinite={config.nonfinite!r}; valid: stop, skip.")


class _Preemption:
  """Turns SIGTERM (a preemption notice) into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _build(config, workdir):
  """Everything the loop needs from the config, before anything is compiled.

  Any error here is a config error: it is raised as ConfigError with the original message.
  """
  try:
    mesh = sh.make_mesh(config.sharding.mesh)
    rules = sh.get_rules(config.sharding.rules)
    _check(config, mesh, rules)
    tokenizer = _tokenizer(config, workdir)
    if tokenizer is not None:
      with config.unlocked():
        _fill_vocab_size(config.model, tokenizer.vocab_size)
        _fill_token_ids(config.model, tokenizer)
    model = models.build(config.model)
    objective = objectives.build(config.objective, config.total_steps)
    tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps,
                                        frozen=getattr(objective, "frozen_params", ""))
    context = dict(tokenizer=tokenizer, text_len=config.data.text_len)
    train_ds = loader.train_dataset(config.data.train, batch_size=config.batch_size,
                                    seed=config.seed, context=context,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count(),
                                    on_corrupt=config.data.on_corrupt)
    local = train_ds[0]
    batch_spec = {k: jax.ShapeDtypeStruct((config.batch_size,) + v.shape[1:], v.dtype)
                  for k, v in local.items()}
    init = state_lib.init_fn(model, objective, tx, batch_spec)
    state_lib.abstract(init, config.seed, mesh, rules)  # Traces the model: shape errors now.
    ctx = eval_lib.EvalContext(model=model, tokenizer=tokenizer, text_len=config.data.text_len,
                               mesh=mesh, rules=rules, process_index=jax.process_index(),
                               process_count=jax.process_count(), objective=objective)
    evals = {name: (eval_lib.build(name, cfg, ctx), int(cfg.get("every", config.eval_every)))
             for name, cfg in config.evals.items()}
  except config_lib.ConfigError:
    raise
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise config_lib.ConfigError(f"{type(e).__name__}: {e}") from e
  return dict(mesh=mesh, rules=rules, model=model, objective=objective, tx=tx,
              schedule=schedule, context=context, batch_spec=batch_spec, evals=evals)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the last metrics."""
  config = config_lib.with_defaults(config)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  b = _build(config, workdir)
  mesh, rules, evals = b["mesh"], b["rules"], b["evals"]
  if is_main:
    atomic_file.write(os.path.join(workdir, "config.json"), config.to_json(indent=2))

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), _Preemption() as preemption:
    state, state_shardings = state_lib.create(b["model"], b["objective"], b["tx"],
                                              b["batch_spec"], config.seed, mesh, rules)
    ckpt = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                                 keep_every=config.keep_every)
    state, start_step = ckpt.restore_latest(state, state_shardings)
    if start_step:
      print(f"Resumed from checkpoint step {start_step} in {ckpt.directory}", flush=True)
    elif config.init_from or config.init_also:
      params, report = _params_from(config, state.params)
      state = state.replace(params=params)
      _print_init_report(", ".join(p for p, _, _ in _init_sources(config)), report, is_main)
    if is_main:
      print(f"bigvl: {jax.device_count()} devices in {jax.process_count()} process(es), "
            f"mesh {dict(mesh.shape)}, {state_lib.param_count(state.params):,} params, "
            f"workdir {workdir}", flush=True)

    step_fn, flops = compile_step(config, b, state, state_shardings)
    peak = mfu_lib.peak_tflops(config.peak_tflops)

    writer = metrics_lib.run_writers(workdir, enabled=is_main)
    progress = metrics_lib.Progress(config.total_steps, start_step, enabled=is_main)
    it = _train_iterator(config, b, ckpt, start_step)
    last = {}
    step = start_step
    try:
      for step in range(start_step + 1, config.total_steps + 1):
        batch = sh.to_global_batch(next(it), mesh, rules)
        state, m = step_fn(state, batch)
        is_last = step == config.total_steps
        # Read once: a SIGTERM arriving later in this iteration must not skip the save and
        # still end the run (it is then handled after the next step).
        stop = preemption.requested
        do_ckpt = is_last or stop or (
            config.checkpoint_every and step % config.checkpoint_every == 0)
        do_eval = {n for n, (_, every) in evals.items()
                   if is_last or (every and step % every == 0)}
        if do_ckpt or do_eval or step % config.log_every == 0:
          m = {k: float(v) for k, v in jax.device_get(m).items()}
          if config.nonfinite == "stop" and m["_nonfinite_step"]:
            _stop_nonfinite(int(m["_nonfinite_step"]), int(m["_nonfinite_metric"]), ckpt)
          m = {k: v for k, v in m.items() if not k.startswith("_")}
          m["train/steps_per_sec"] = sps = progress.rate(step)
          m["train/examples_per_sec"] = sps * config.batch_size
          if flops:
            m["train/tflops_per_device"] = sps * flops / 1e12
            if peak:
              m["train/mfu"] = m["train/tflops_per_device"] / peak
          writer.write(step, m)
          progress.line(step, m)
          last.update(m)
        if do_eval:
          t0 = time.perf_counter()
          em = {}
          for name in sorted(do_eval):
            em.update({f"eval/{name}/{k}": v for k, v in evals[name][0].run(state.params).items()})
            if hasattr(evals[name][0], "images"):
              writer.write_images(step, {f"eval/{name}/{k}": v
                                         for k, v in evals[name][0].images().items()})
          writer.write(step, em)
          last.update(em)
          if is_main:
            print(f"step {step} eval ({time.perf_counter() - t0:.1f}s): " +
                  ", ".join(f"{k} {v:.4f}" for k, v in em.items()), flush=True)
          progress.rate(step)  # Evaluation time is not training speed.
        if do_ckpt:
          ckpt.save(step, state, config, data_state=dict(
              step=step, workers=config.data.workers, grain=it.get_state()))
        if stop:
          ckpt.wait()
          print(f"SIGTERM: saved checkpoint at step {step} in {ckpt.directory}; exiting. Run the "
                "same command again to resume.", flush=True)
          break
    finally:
      ckpt.wait()
      ckpt.close()
      writer.close()
      if hasattr(it, "close"):
        it.close()  # Stops grain's worker processes now, not at interpreter exit.
    if is_main and step == config.total_steps:
      model_card.write(workdir, config, last, ckpt.latest_step())
  return last


def _train_iterator(config, b, ckpt, start_step: int):
  """The data iterator positioned after `start_step`, from the checkpoint's saved state
  when it was saved by the same number of processes and workers."""
  kwargs = dict(batch_size=config.batch_size, seed=config.seed, start_step=start_step,
                context=b["context"], workers=config.data.workers,
                prefetch=config.data.prefetch, process_index=jax.process_index(),
                process_count=jax.process_count(), on_corrupt=config.data.on_corrupt)
  saved = ckpt.restore_data_state(start_step) if start_step else None
  if saved is not None:
    grain_state = saved.get("grain", {})
    if saved.get("workers") != config.data.workers:
      problem = f"saved with data.workers={saved.get('workers')}, now {config.data.workers}"
    elif saved.get("step") != start_step or grain_state.get("next_index", start_step) != start_step:
      problem = f"it is at step {saved.get('step')}, the checkpoint at step {start_step}"
    else:
      return loader.train_iterator(config.data.train, state=grain_state, **kwargs)
    if jax.process_index() == 0:
      print(f"Saved data iterator state not used ({problem}); indexing the data stream at "
            f"step {start_step} instead, which gives the same batches.", flush=True)
  return loader.train_iterator(config.data.train, **kwargs)


def compile_step(config, b, state, state_shardings):
  """(compiled train step, its FLOPs per device or None).

  Compiled ahead of time so that XLA's cost analysis of the very program that runs gives
  the model FLOPs for MFU; the state's buffers are donated.
  """
  batch_shardings = {k: sh.batch_sharding(b["mesh"], b["rules"], len(v.shape))
                     for k, v in b["batch_spec"].items()}
  step_fn = jax.jit(
      functools.partial(step_lib.train_step, model=b["model"], objective=b["objective"],
                        tx=b["tx"], schedule=b["schedule"],
                        grad_accum_steps=config.grad_accum_steps),
      in_shardings=(state_shardings, batch_shardings),
      out_shardings=(state_shardings, NamedSharding(b["mesh"], P())),
      donate_argnums=(0,))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k])
           for k, v in b["batch_spec"].items()}
  compiled = step_fn.lower(state, batch).compile()
  return compiled, mfu_lib.compiled_flops(compiled)


def _init_sources(config) -> list[tuple[str, str, str]]:
  """(path, subtree, into) of `config.init_from` and of each `config.init_also` entry."""
  out = [(config.init_from, config.init_subtree, config.init_into)] if config.init_from else []
  for i, extra in enumerate(config.init_also):
    extra = dict(extra)
    unknown = set(extra) - {"init_from", "init_subtree", "init_into"}
    if unknown or not extra.get("init_from"):
      raise config_lib.ConfigError(
          f"config.init_also[{i}] = {extra}: each entry is a dict with init_from (required), "
          f"init_subtree and init_into{'; unknown ' + str(sorted(unknown)) if unknown else ''}.")
    out.append((extra["init_from"], extra.get("init_subtree", ""), extra.get("init_into", "")))
  return out


def _params_from(config, params):
  """`params` with those of every init source (`config.init_from` and `config.init_also`:
  each one's `init_subtree`, placed under its `init_into`) that match by path and shape;
  (params, report) as checkpoint.merge_params. Two sources may not give the same param."""
  merged: dict = {}
  for path, subtree, into in _init_sources(config):
    loaded = ckpt_lib.load_params(path)
    if subtree:
      try:
        loaded = ckpt_lib.subtree(loaded, subtree)
      except ValueError as e:
        raise config_lib.ConfigError(str(e)) from e
    if into:
      loaded = {f"{into.strip('/')}/{k}": v for k, v in loaded.items()}
    clash = sorted(set(loaded) & set(merged))
    if clash:
      raise config_lib.ConfigError(f"Init source {path} gives params another source gives too, "
                                   f"e.g. {clash[:3]}; narrow init_subtree / init_into.")
    merged.update(loaded)
  return ckpt_lib.merge_params(params, merged)


def _print_init_report(path, report, is_main):
  if not is_main:
    return
  print(f"Initialised params from {path}: {len(report['loaded'])} loaded, "
        f"{len(report['new'])} new, {len(report['mismatched'])} shape-mismatched (kept new), "
        f"{len(report['dropped'])} dropped.", flush=True)
  for kind in ("new", "mismatched", "dropped"):
    for key in report[kind]:
      print(f"  {kind}: {key}", flush=True)


def _stop_nonfinite(step: int, metric_code: int, ckpt) -> None:
  ckpt.wait()
  metric = state_lib.NONFINITE.get(metric_code, "train/loss")
  raise TrainingError(
      f"Non-finite {metric} at step {step} (config.nonfinite='stop'). Nothing was saved at or "
      f"after that step; the last good checkpoint is step {ckpt.latest_step()} in "
      f"{ckpt.directory}. Check the data and lower config.optimizer.lr, or set "
      "config.nonfinite='skip' to drop such updates.")


def _parse_flags(argv):
  spec, overrides, rest = config_lib.split_config_flags(argv)
  rest = FLAGS(rest)
  if spec is None:
    raise app.UsageError("--config is required, e.g. --config configs/demo/siglip_digits.py")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  return rest, spec, overrides


def init_distributed() -> None:
  """Joins the multi-process run described by the flags, if any."""
  if not (FLAGS.coordinator_address or FLAGS.distributed):
    return
  # CPU processes need a collectives backend to talk to each other; other backends ignore it.
  # (Asking which backend this is would start it, and initialize() must come first.)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s)
  if FLAGS.coordinator_address:
    if FLAGS.num_processes is None or FLAGS.process_id is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
    kwargs.update(coordinator_address=FLAGS.coordinator_address,
                  num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  jax.distributed.initialize(**kwargs)


def main(argv) -> int:
  try:
    rest, spec, overrides = _parse_flags(argv)
    if len(rest) > 1:
      raise app.UsageError(f"Unexpected arguments: {rest[1:]}")
    config = config_lib.apply_overrides(config_lib.load_config_file(spec), overrides)
  except (config_lib.ConfigError, app.UsageError, flags.Error) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  init_distributed()
  try:
    train_and_evaluate(config, FLAGS.workdir)
  except (config_lib.ConfigError, TrainingError, loader.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run():
  logging.set_verbosity(logging.WARNING)
  sys.exit(main(sys.argv))


if __name__ == "__main__":
  run()
