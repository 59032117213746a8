"""The single train loop and its CLI.

    python -m bigvl.train --config configs/demo/siglip_digits.py --workdir /tmp/siglip \
        [--config.total_steps=2000 ...]

Re-running the same command on the same workdir resumes from its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

from bigvl import init_from, model_card, recipes, resume_check, storage, workdir_lock
from bigvl import checkpoint as ckpt_lib
from bigvl import config_lib, metrics as metrics_lib
from bigvl import mfu as mfu_lib
from bigvl import model_flops as model_flops_lib
from bigvl import run as run_lib
from bigvl import state as state_lib
from bigvl.data import loader, run_tokenizer

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


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the last metrics."""
  missing = recipes.missing_args(config)
  if missing:  # Before the workdir is touched: nothing to clean up.
    raise config_lib.ConfigError("A required config arg is not set: " + "; ".join(missing)
                                 + " (e.g. --config FILE.py:init=PATH).")
  workdir = storage.abspath(workdir)
  ckpt_lib.check_location(workdir)
  if storage.isfile(workdir):
    raise config_lib.ConfigError(f"--workdir {workdir} is a file, not a directory; pass a "
                                 "directory (new or a run's) for checkpoints and logs.")
  try:
    storage.makedirs(workdir)
  except OSError as e:
    raise config_lib.ConfigError(_not_writable(workdir, e)) from e
  is_main = jax.process_index() == 0
  lock = workdir_lock.WorkdirLock(workdir, enabled=is_main, log=_print_main)
  try:
    lock.__enter__()  # One run per workdir (LockedError names the other).
  except OSError as e:  # The lock is the first file written: a read-only or full workdir.
    raise config_lib.ConfigError(_not_writable(workdir, e)) from e
  try:
    if is_main:
      check_writable(workdir)
    with compilation_cache(compilation_cache_dir(config, workdir)):
      return _train(config, workdir)
  finally:
    lock.__exit__(None, None, None)


def _print_main(line: str) -> None:
  print(line, flush=True)


def _not_writable(workdir: str, e: BaseException) -> str:
  return (f"--workdir {workdir} is not writable ({type(e).__name__}: "
          f"{str(e).splitlines()[0][:200]}); checkpoints and logs go there. Fix its "
          "permissions or free space, or pass another --workdir.")


def check_writable(workdir: str) -> None:
  """ConfigError, before anything is compiled, when the workdir or its checkpoints/ cannot
  be written (a read-only mount, permissions, a full disk)."""
  # The workdir, and its checkpoints/ when a run made one (nothing is created here: a
  # config that fails next must leave no checkpoints/ behind).
  dirs = [workdir] + [d for d in (storage.join(workdir, "checkpoints"),) if storage.isdir(d)]
  for d in dirs:
    probe = storage.join(d, f".write-test-{os.getpid()}")
    try:
      storage.write(probe, b"x" * 4096)
      storage.remove(probe)
    except OSError as e:
      raise config_lib.ConfigError(_not_writable(workdir, e)) from e


def _train(config, workdir: str) -> dict:
  run = run_lib.build(config, workdir)
  config, is_main = run.config, jax.process_index() == 0
  # Before anything is written: a workdir with checkpoints is resumed only by the same run.
  changed = resume_check.check(workdir, config)
  if is_main and changed:
    print("Resuming with changed config keys (no effect on the numbers, or allowed by "
          "config.allow_changes): " + "; ".join(changed), flush=True)
  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                               keep_every=config.keep_every)
  # Counted before the mesh is set: global shapes, outside any shard_map (traced, nothing run).
  model_flops, flops_line = _count_model_flops(run) if is_main else (None, "")
  with run.context(), _Preemption() as preemption:
    state, shardings = run.create_state()
    state, start_step = _resume_or_init(run, ckpt, state, shardings)
    if is_main:  # Only now: a resume that fails leaves the workdir's config.json as it was.
      storage.write(storage.join(workdir, "config.json"), config.to_json(indent=2))
    if is_main:
      print(f"bigvl: {jax.device_count()} devices in {jax.process_count()} process(es), "
            f"mesh {dict(run.mesh.shape)}, {state_lib.param_count(state.params):,} params, "
            f"workdir {workdir}", flush=True)
      print(flops_line, flush=True)
    step_fn, flops = _compile(run, state, shardings, is_main)
    log = _Logger(run, workdir, start_step, flops, model_flops, enabled=is_main)
    it = _train_iterator(run, ckpt, start_step)
    step = start_step
    try:
      for step in range(start_step + 1, config.total_steps + 1):
        state, result = step_fn(state, *run.global_batch(next(it)))
        ckpt.poll()  # A failed async save stops the run one step later; checksums.
        is_last = step == config.total_steps
        # Read once: a SIGTERM arriving later in this iteration must not skip the save and
        # still end the run (it is then handled after the next step).
        stop = preemption.requested
        do_ckpt = is_last or stop or _every(step, config.checkpoint_every)
        due = [n for n, e in run.evals.items() if is_last or _every(step, e.every)]
        log.count(result)
        if do_ckpt or due or step % config.log_every == 0:
          if config.nonfinite == "stop" and int(result.nonfinite_step):
            _stop_nonfinite(int(result.nonfinite_step), int(result.nonfinite_metric), ckpt)
          log.train(step, result)
        if due:
          log.evals(step, run, state, due)
        if do_ckpt:
          ckpt.save(step, state, config, data_state=dict(
              step=step, workers=config.data.workers, grain=it.get_state()))
        if stop:
          ckpt.wait()
          print(f"SIGTERM: saved checkpoint at step {step} in {ckpt.directory}; exiting. Run the "
                "same command again to resume.", flush=True)
          break
    except BaseException:
      # Already failing: a save that fails too must not replace the first error, or hang.
      with contextlib.suppress(Exception):
        ckpt.wait()
      with contextlib.suppress(Exception):
        ckpt.close()
      log.close()
      if hasattr(it, "close"):
        it.close()
      raise
    else:
      try:
        ckpt.wait()
      finally:
        with contextlib.suppress(Exception):
          ckpt.close()
        log.close()
        if hasattr(it, "close"):
          it.close()  # Stops grain's worker processes now, not at interpreter exit.
  if is_main and step == config.total_steps:
    model_card.write(workdir, config, log.last, ckpt.latest_step())
  return log.last


def rate_metrics(steps_per_sec: float, batch_size: int, model_flops_per_step: float | None,
                 compiled_flops_per_device: float | None, peak: float | None,
                 devices: int) -> dict[str, float]:
  """The speed metrics of a train row.

  train/steps_per_sec, train/examples_per_sec (global batch x rate);
  train/tflops_per_device: XLA's FLOPs of one device's compiled step x rate (what ran:
    remat recomputation included, Pallas kernels 0);
  train/mfu: model FLOPs of the global step (bigvl/model_flops.py) x rate / (peak x devices);
  train/hfu: XLA's per-device FLOPs x rate / peak. Each only when its FLOPs (and the peak,
  config.peak_tflops or the device table; none on CPU) are known.
  """
  m = {"train/steps_per_sec": steps_per_sec, "train/examples_per_sec": steps_per_sec * batch_size}
  if compiled_flops_per_device:
    m["train/tflops_per_device"] = steps_per_sec * compiled_flops_per_device / 1e12
  mfu = mfu_lib.utilization(model_flops_per_step, steps_per_sec, peak, devices)
  if mfu is not None:
    m["train/mfu"] = mfu
  hfu = mfu_lib.utilization(compiled_flops_per_device, steps_per_sec, peak, 1)
  if hfu is not None:
    m["train/hfu"] = hfu
  return m


def _count_model_flops(run):
  """(run's ModelFlops, a line for the log); (None, a warning) if they cannot be counted,
  e.g. a loss with a while loop of matmuls: only train/mfu is lost."""
  try:
    flops = model_flops_lib.of_run(run)
  except Exception as e:  # A metric must never stop training.
    return None, (f"warning: model FLOPs not counted, train/mfu is not logged "
                  f"({type(e).__name__}: {e})")
  return flops, (f"model FLOPs: {flops.per_step:.4g} per step, {flops.per_example:.4g} per "
                 "example (forward + backward, no recomputation)")


# ------------------------------------------------------------------------------------------
# Persistent compilation cache.

CACHE_DIR_NAME = ".bigvl_compilation_cache"
# Where "auto" puts the cache for every run of this environment (a cluster's shared cache, a
# test session's): set once, no config changes.
CACHE_DIR_ENV = "BIGVL_COMPILATION_CACHE_DIR"


def compilation_cache_dir(config, workdir: str) -> str | None:
  """Where `config.compilation_cache_dir` puts jax's persistent compilation cache: "auto"
  (the default) -> $BIGVL_COMPILATION_CACHE_DIR when set, else
  `<parent of workdir>/.bigvl_compilation_cache`, shared by the runs beside this one, or for
  a workdir in an object store `~/.cache/bigvl/compilation_cache` on each host (jax reads
  and writes a cache entry per program; on a store each is a request, and a host's own disk
  is the faster place); "" -> None (off); anything else is the directory itself, local or a
  URL."""
  value = config_lib.with_defaults(config).compilation_cache_dir
  if not value:
    return None
  if value == "auto" and os.environ.get(CACHE_DIR_ENV):
    return storage.abspath(os.environ[CACHE_DIR_ENV])
  if value == "auto":
    if storage.is_remote(workdir):
      return os.path.join(os.path.expanduser("~"), ".cache", "bigvl", "compilation_cache")
    parent = os.path.dirname(os.path.abspath(workdir.rstrip(os.sep)))
    return os.path.join(parent, CACHE_DIR_NAME)
  return storage.abspath(value)


# (jax option, value while the loop runs): cache every program that took >= 0.1 s to compile
# (jax's default, 1 s, misses most CPU programs; eager one-op programs stay out), of any size.
CACHE_OPTIONS = (("jax_persistent_cache_min_compile_time_secs", 0.1),
                 ("jax_persistent_cache_min_entry_size_bytes", -1))


@contextlib.contextmanager
def compilation_cache(path: str | None):
  """jax's persistent compilation cache in `path` (None: off) while the block runs; jax's
  previous settings after it. The cache keys on the program, options and jax version, so a
  second start of the same config loads its compiled programs instead of compiling them."""
  from jax.experimental.compilation_cache import compilation_cache as cc
  names = ("jax_compilation_cache_dir",) + tuple(n for n, _ in CACHE_OPTIONS)
  previous = {n: getattr(jax.config, n) for n in names}
  if path is not None:
    storage.makedirs(path)
  for name, value in (("jax_compilation_cache_dir", path),) + CACHE_OPTIONS:
    jax.config.update(name, value)
  cc.reset_cache()  # jax reads the directory once per process: make it read this one.
  try:
    yield path
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)
    cc.reset_cache()


class CacheHits:
  """Counts jax's persistent-cache hits and lookups of the compilations inside the block.

      with CacheHits() as hits:
        compiled = jax.jit(f).lower(x).compile()
      hits.hits, hits.requests, hits.describe()
  """
  HIT = "/jax/compilation_cache/cache_hits"
  REQUEST = "/jax/compilation_cache/compile_requests_use_cache"

  def __init__(self):
    self.hits = self.requests = 0
    self.path = None

  def _on_event(self, event: str, **kwargs) -> None:
    if event == self.HIT:
      self.hits += 1
    elif event == self.REQUEST:
      self.requests += 1

  def __enter__(self):
    self.path = jax.config.jax_compilation_cache_dir  # The cache these compilations use.
    jax.monitoring.register_event_listener(self._on_event)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_listener(self._on_event)

  def describe(self) -> str:
    """"persistent compilation cache hit: ..." / "... miss" / "... off", for the log."""
    if not self.path:
      return "persistent compilation cache off"
    if self.hits:
      return f"persistent compilation cache hit: loaded from {self.path}"
    return f"persistent compilation cache miss: compiled, saved to {self.path}"


def _every(step: int, every: int) -> bool:
  return bool(every) and step % every == 0


def _compile(run, state, shardings, is_main: bool):
  """run.compile_step, timed; logs how long it took and whether it came from the cache."""
  with CacheHits() as hits:
    t0 = time.perf_counter()
    step_fn, flops = run.compile_step(state, shardings)
    seconds = time.perf_counter() - t0
  if is_main:
    print(f"compiled the train step in {seconds:.2f}s ({hits.describe()})", flush=True)
  return step_fn, flops


def _resume_or_init(run, ckpt, state, shardings):
  """(state, start step): the newest readable checkpoint's, else the init state with the
  params of `config.init_from` / `init_also` merged in, at step 0."""
  state, start_step = ckpt.restore_latest(state, shardings)
  config = run.config
  if start_step:
    print(f"Resumed from checkpoint step {start_step} in {ckpt.directory}", flush=True)
  elif config.init_from or config.init_also:
    params, report = init_from.params_from(config, state.params)
    state = state.replace(params=params)
    if jax.process_index() == 0:
      print("\n".join(init_from.report_lines(config, report)), flush=True)
  return state, start_step


class _Logger:
  """The loop's metrics: progress lines, metrics.jsonl / TensorBoard rows, eval lines."""

  def __init__(self, run, workdir: str, start_step: int, flops, model_flops, enabled: bool):
    self.run, self.flops = run, flops
    self.model_flops = model_flops.per_step if model_flops is not None else None
    self.batch_size = run.config.batch_size
    self.peak = mfu_lib.peak_tflops(run.config.peak_tflops,
                                    dtype=run.config.model.get("dtype", "float32"))
    self.devices = jax.device_count()
    self.writer = metrics_lib.run_writers(workdir, enabled=enabled, resume_step=start_step)
    self.progress = metrics_lib.Progress(run.config.total_steps, start_step, enabled=enabled)
    self.enabled = enabled
    self.sources = run.source_names if len(run.source_names) > 1 else ()
    self.window = None      # Per-source example counts since the last train row (device).
    self.last: dict = {}

  def count(self, result) -> None:
    if self.sources:  # Summed on the device: no host sync per step.
      self.window = result.source_counts if self.window is None else \
          self.window + result.source_counts

  def train(self, step: int, result) -> None:
    m = {k: float(v) for k, v in jax.device_get(result.metrics).items()}
    if self.window is not None:
      counts = np.asarray(jax.device_get(self.window))
      m.update({f"data/source_examples/{n}": float(c) for n, c in zip(self.sources, counts)})
      self.window = None
    m.update(rate_metrics(self.progress.rate(step), self.batch_size, self.model_flops,
                          self.flops, self.peak, self.devices))
    self.writer.write(step, m)
    self.progress.line(step, m)
    self.last.update(m)

  def evals(self, step: int, run, state, names) -> None:
    t0 = time.perf_counter()
    em = run.evaluate(state, names)
    for name in sorted(names):
      evaluator = run.evals[name].evaluator
      if hasattr(evaluator, "images"):
        self.writer.write_images(step, {f"eval/{name}/{k}": v
                                        for k, v in evaluator.images().items()})
    self.writer.write(step, em)
    self.last.update(em)
    if self.enabled:
      print(f"step {step} eval ({time.perf_counter() - t0:.1f}s): " +
            ", ".join(f"{k} {v:.4f}" for k, v in em.items()), flush=True)
    self.progress.rate(step)  # Evaluation time is not training speed.

  def close(self) -> None:
    self.writer.close()


def _train_iterator(run, ckpt, start_step: int):
  """The data iterator positioned after `start_step`, from the checkpoint's saved state
  when it was saved by the same number of processes and workers."""
  workers = run.config.data.workers
  problem = None
  try:
    saved = ckpt.restore_data_state(start_step) if start_step else None
  except Exception as e:  # Garbled or truncated JSON, a damaged file: the step says where.
    saved, problem = None, f"unreadable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
  if saved is not None and not (isinstance(saved, dict) and isinstance(saved.get("grain"), dict)):
    saved, problem = None, "not an iterator state"
  if saved is not None:
    grain_state = saved["grain"]
    if saved.get("workers") != workers:
      problem = f"saved with data.workers={saved.get('workers')}, now {workers}"
    elif saved.get("step") != start_step or grain_state.get("next_index", start_step) != start_step:
      problem = f"it is at step {saved.get('step')}, the checkpoint at step {start_step}"
    else:
      try:
        return run.train_iterator(start_step, grain_state)
      except Exception as e:  # A state that parses but does not fit this pipeline.
        problem = f"rejected by the pipeline: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
  if problem is not None:
    if jax.process_index() == 0:
      print(f"Saved data iterator state not used ({problem}); indexing the data stream at "
            f"step {start_step} instead, which gives the same batches.", flush=True)
  return run.train_iterator(start_step)


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
  except (config_lib.ConfigError, TrainingError, loader.DataError, workdir_lock.LockedError,
          ckpt_lib.SaveError,
          ckpt_lib.LayoutError, run_tokenizer.TokenizerError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run():
  logging.set_verbosity(logging.WARNING)
  sys.exit(main(sys.argv))


if __name__ == "__main__":
  run()
