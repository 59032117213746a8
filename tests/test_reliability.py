"""Reliability: exact resume after kill -9, SIGTERM, corrupt checkpoints, resharded restore,
the NaN policy, params-only init, and the messages of configs that cannot work."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bigvl import checkpoint, config_lib, metrics, train
from conftest import DEMO_SIGLIP, REPO, run_bigvl

pytestmark = [pytest.mark.integration, pytest.mark.faults]  # The fault suite too.

FAST = ["--config.checkpoint_every=10", "--config.log_every=1", "--config.evals={}"]


def popen_train(workdir, *args, env=None):
  cmd = [sys.executable, "-m", "bigvl.train", "--config", DEMO_SIGLIP, "--workdir", str(workdir),
         *args]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


def logged_steps(workdir):
  path = workdir / "metrics.jsonl"
  return [r["step"] for r in metrics.read_jsonl(str(path))] if path.exists() else []


def checkpoint_steps(workdir):
  d = workdir / "checkpoints"
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if d.exists() else []


def _run_until(workdir, step, *args, sig=signal.SIGKILL, checkpoint=None, timeout=300):
  """Starts a run and sends `sig` once metrics.jsonl has logged `step` (and, if given, the
  async save of `checkpoint` has become visible)."""
  proc = popen_train(workdir, *args)
  deadline = time.time() + timeout
  while (max(logged_steps(workdir), default=0) < step or
         (checkpoint and checkpoint not in checkpoint_steps(workdir))):
    assert proc.poll() is None, f"run ended early:\n{proc.stdout.read()}"
    assert time.time() < deadline, "run too slow"
    time.sleep(0.01)
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=120)
  return proc.returncode, out


def _losses(workdir):
  # A step logged twice (before a kill and after the resume) keeps its last value.
  return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(str(workdir / "metrics.jsonl"))
          if "train/loss" in r}


def _assert_same_params(a, b):
  pa, pb = checkpoint.load_params(str(a)), checkpoint.load_params(str(b))
  assert pa.keys() == pb.keys()
  for k in pa:
    assert np.array_equal(pa[k], pb[k]), f"param {k} differs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir), "--config.total_steps=40",
             *FAST], check=True)
  return workdir


def _kill_and_resume(tmp_path, uninterrupted, kill_step, *extra):
  workdir = tmp_path / f"kill{kill_step}"
  # Saves are asynchronous: wait for the last one before the kill point to be complete.
  rc, _ = _run_until(workdir, kill_step, "--config.total_steps=40", *FAST, *extra,
                     checkpoint=kill_step // 10 * 10)
  assert rc == -signal.SIGKILL
  resumed = max(checkpoint_steps(workdir))  # Newest complete checkpoint at the time of the kill.
  assert resumed >= kill_step // 10 * 10 and resumed < 40
  assert (workdir / "checkpoints" / str(resumed) / "data" / "process_0-of-1.json").exists()
  rerun = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir),
                     "--config.total_steps=40", *FAST, *extra], check=True)
  assert f"Resumed from checkpoint step {resumed} " in rerun.stdout
  assert "data iterator state not used" not in rerun.stdout  # The saved state was restored.
  assert f"step {resumed + 1}/40 " in rerun.stdout  # The step count continues, not from 0.
  reference = _losses(uninterrupted)
  got = _losses(workdir)
  assert {s: got[s] for s in range(resumed + 1, 41)} == \
      {s: reference[s] for s in range(resumed + 1, 41)}
  _assert_same_params(workdir, uninterrupted)


@pytest.mark.slow
def test_kill9_between_checkpoints_resumes_bit_exact(tmp_path, uninterrupted):
  _kill_and_resume(tmp_path, uninterrupted, 27)


@pytest.mark.slow
@pytest.mark.parametrize("kill_step", [13, 36])
def test_kill9_at_more_points_resumes_bit_exact(tmp_path, uninterrupted, kill_step):
  _kill_and_resume(tmp_path, uninterrupted, kill_step)


@pytest.mark.slow
def test_kill9_with_data_workers_resumes_bit_exact(tmp_path, uninterrupted):
  # Two grain worker processes; their iterator state is restored, and the batches are the
  # same as the reference run's, read in the main process.
  _kill_and_resume(tmp_path, uninterrupted, 27, "--config.data.workers=2")


@pytest.mark.slow
def test_kill9_during_checkpoint_write(tmp_path, uninterrupted):
  workdir = tmp_path / "killsave"
  # The fault comes from outside bigvl: tests/fault_inject.py wraps the train CLI.
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tests", "fault_inject.py"), "--kill_during_save=20",
       "--config", DEMO_SIGLIP, "--workdir", str(workdir), "--config.total_steps=40", *FAST],
      cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == -signal.SIGKILL
  assert sorted(checkpoint.Checkpointer(str(workdir)).all_steps()) == [10]  # 20 never appeared.
  rerun = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir),
                     "--config.total_steps=40", *FAST], check=True)
  assert "Resumed from checkpoint step 10" in rerun.stdout
  _assert_same_params(workdir, uninterrupted)


@pytest.mark.slow  # 35 s: a training subprocess.
def test_sigterm_saves_current_step_and_exits_cleanly(tmp_path):
  workdir = tmp_path / "term"
  rc, out = _run_until(workdir, 15, "--config.total_steps=5000", *FAST, sig=signal.SIGTERM)
  assert rc == 0, out
  saved = int(out.split("SIGTERM: saved checkpoint at step ")[1].split()[0])
  assert saved >= 15
  assert checkpoint.Checkpointer(str(workdir)).latest_step() == saved
  assert max(logged_steps(workdir)) == saved


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path):
  workdir = tmp_path / "trunc"
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir), "--config.total_steps=20",
             *FAST], check=True)
  newest = workdir / "checkpoints" / "20"
  files = sorted((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  biggest = files[-1]
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
  rerun = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir),
                     "--config.total_steps=25", "--config.allow_changes=total_steps", *FAST], check=True)
  assert "WARNING: checkpoint" in rerun.stderr and str(newest) in rerun.stderr
  assert "Resumed from checkpoint step 10" in rerun.stdout
  kept = list((workdir / "corrupt_checkpoints").iterdir())
  assert len(kept) == 1 and kept[0].name.startswith("20-")  # Moved aside, not deleted.


@pytest.mark.slow
def test_restore_on_other_mesh_and_device_count(tmp_path):
  eight = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  four = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  fsdp = ["--config.sharding.mesh={'data': 1, 'fsdp': 8, 'tensor': 1}",
          "--config.sharding.rules=fsdp"]
  dp = ["--config.sharding.mesh={'data': -1, 'fsdp': 1, 'tensor': 1}", "--config.sharding.rules=dp"]
  saved = tmp_path / "fsdp8"
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(saved), "--config.total_steps=10",
             *FAST, *fsdp], env=eight, check=True)
  other = tmp_path / "dp4"
  shutil.copytree(saved, other)
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(saved), "--config.total_steps=11", "--config.allow_changes=total_steps",
             *FAST, *fsdp], env=eight, check=True)
  proc = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(other), "--config.total_steps=11", "--config.allow_changes=total_steps",
                    *FAST, *dp], env=four, check=True)
  assert "4 devices" in proc.stdout and "Resumed from checkpoint step 10" in proc.stdout
  want, got = _losses(saved)[11], _losses(other)[11]
  assert abs(got - want) <= 1e-6 * abs(want)


def _nan_source_module(tmp_path):
  (tmp_path / "nan_source.py").write_text(
      "import numpy as np\n"
      "from bigvl.data.digits import Digits\n"
      "class NanDigits(Digits):\n"
      "  def __init__(self, split='train', nan_index=-1):\n"
      "    super().__init__(split)\n"
      "    self.nan_index = nan_index\n"
      "  def __getitem__(self, i):\n"
      "    ex = super().__getitem__(i)\n"
      "    ex['index'] = np.int32(i)\n"
      "    if i == self.nan_index:\n"
      "      ex['image'] = np.full(ex['image'].shape, np.nan, np.float32)\n"
      "    return ex\n")


def _first_step_with(index, config):
  from bigvl.data import loader
  cfg = dict(config.data.train, pp="keep('index')")
  ds = loader.train_dataset(cfg, batch_size=config.batch_size, seed=config.seed, context={})
  for s in range(config.total_steps):
    if index in ds[s].inputs["index"]:
      return s + 1
  return None


@pytest.mark.slow  # 34 s per policy: training subprocesses.
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_in_batch(tmp_path, monkeypatch, policy):
  _nan_source_module(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  config = config_lib.load_config_file(DEMO_SIGLIP + ":steps=20")
  config.evals = {}
  config.checkpoint_every = 5
  config.log_every = 5
  config.nonfinite = policy
  config.data.train.name = "nan_source:NanDigits"
  # The NaN image is float: normalise on the host (a uint8 stream cannot carry a NaN).
  config.data.device_normalize = False
  # A record that first shows up in the middle of the run (20 steps x 64 < one epoch).
  index = next(i for i in range(1437)
               if 7 <= (_first_step_with(i, _with(config, nan_index=i)) or 0) <= 18)
  config.data.train.nan_index = index
  k = _first_step_with(index, config)
  workdir = tmp_path / policy
  if policy == "stop":
    with pytest.raises(train.TrainingError, match=f"Non-finite train/loss at step {k} "):
      train.train_and_evaluate(config, str(workdir))
    latest = checkpoint.Checkpointer(str(workdir)).latest_step()
    assert latest is not None and latest < k
    params = checkpoint.load_params(str(workdir))
    assert all(np.isfinite(v).all() for v in params.values())
  else:
    train.train_and_evaluate(config, str(workdir))
    rows = [r for r in metrics.read_jsonl(str(workdir / "metrics.jsonl")) if "train/loss" in r]
    assert rows[-1]["step"] == 20 and rows[-1]["train/skipped_steps"] == 1
    assert np.isfinite(rows[-1]["train/loss"])


def _with(config, **train_opts):
  c = config_lib.ConfigDict(config.to_dict())
  c.data.train.update(train_opts)
  return c


@pytest.mark.slow
def test_init_from_reports_loaded_new_and_dropped(tmp_path):
  src = tmp_path / "src"
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(src), "--config.total_steps=10",
             *FAST], check=True)
  proc = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(tmp_path / "dst"),
                    "--config.total_steps=2", *FAST, f"--config.init_from={src}",
                    "--config.model.image.pool=gap", "--config.model.embed_dim=32"], check=True)
  out = proc.stdout
  assert "Initialised params from" in out
  assert "dropped: img/map_head/probe" in out
  assert "mismatched: img_proj/kernel (64, 64) -> (64, 32)" in out
  loaded = int(out.split("Initialised params from")[1].split(":")[1].split("loaded")[0])
  assert loaded > 50


@pytest.mark.parametrize("overrides,message", [
    ({"sharding.mesh": dict(data=2, fsdp=1, tensor=1)}, "needs 2 devices but 1 are available"),
    ({"model.image.variant": "Q/4", "model.image.width": None}, "Unknown model size 'Q'"),
    ({"data.tokenizer": "/nonexistent/spm.model"}, "Tokenizer model not found: '/nonexistent"),
    ({"evals": dict(zs=dict(name="zeroshot", data=dict(name="digits", split="validation")))},
     "Unknown digits split 'validation'"),
    ({"nonfinite": "ignore"}, "config.nonfinite='ignore'; valid: stop, skip"),
])
def test_configs_that_cannot_work_fail_before_compiling(tmp_path, demo_config, overrides,
                                                      message):
  config = demo_config(**overrides)
  with pytest.raises(config_lib.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert not (tmp_path / "wd" / "checkpoints").exists()


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
  proc = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(tmp_path),
                    "--config.batch_size=60"],
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert proc.returncode == 1
  assert "config.batch_size=60 is not divisible by the data-parallel size 8" in proc.stderr
