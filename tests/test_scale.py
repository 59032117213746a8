"""Scale-out: the same numbers on 1 device, 8 devices under every sharding preset, and
2 processes x 4 devices; gradient accumulation; a dead process ends the run."""

import os
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from bigvl import config_lib, metrics, models, objectives, optim, sharding as sh
from bigvl import state as state_lib, step as step_lib
from bigvl.data import digits, loader, tokenizer as tok_lib
from conftest import DEMO_SIGLIP, REPO, run_bigvl

pytestmark = pytest.mark.integration

STEPS = 10
COMMON = [f"--config.total_steps={STEPS}", "--config.log_every=1", "--config.evals={}",
          "--config.checkpoint_every=0"]


def _devices(n):
  return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def _mesh(data, fsdp, tensor, rules):
  return [f"--config.sharding.mesh={{'data': {data}, 'fsdp': {fsdp}, 'tensor': {tensor}}}",
          f"--config.sharding.rules={rules}"]


def _losses(workdir):
  rows = [r for r in metrics.read_jsonl(str(workdir / "metrics.jsonl")) if "train/loss" in r]
  return np.array([r["train/loss"] for r in sorted(rows, key=lambda r: r["step"])])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_processes(workdir, n, devices_each, *args):
  port = _free_port()
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu", **_devices(devices_each))
  return [subprocess.Popen(
      [sys.executable, "-m", "bigvl.train", "--config", DEMO_SIGLIP, "--workdir", str(workdir),
       f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}", f"--process_id={p}",
       *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for p in range(n)]


@pytest.mark.slow
def test_same_losses_on_every_mesh_and_process_count(tmp_path):
  runs = {
      "1 device": ([], _devices(1)),
      "8 data parallel": (_mesh(-1, 1, 1, "dp"), _devices(8)),
      "fsdp=8": (_mesh(1, 8, 1, "fsdp"), _devices(8)),
      "fsdp=4 x tensor=2": (_mesh(1, 4, 2, "fsdp_tp"), _devices(8)),
  }
  losses = {}
  for name, (mesh_args, env) in runs.items():
    workdir = tmp_path / name.replace(" ", "_")
    proc = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir), *COMMON, *mesh_args],
                     env=env, check=True)
    losses[name] = _losses(workdir)
  workdir = tmp_path / "2x4"
  procs = _start_processes(workdir, 2, 4, *COMMON, *_mesh(-1, 1, 1, "dp"))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  assert "8 devices in 2 process(es)" in outs[0]
  losses["2 processes x 4 devices"] = _losses(workdir)

  reference = losses["1 device"]
  assert len(reference) == STEPS
  for name, got in losses.items():
    np.testing.assert_allclose(got, reference, rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_killing_one_process_ends_the_other(tmp_path):
  workdir = tmp_path / "wd"
  procs = _start_processes(workdir, 2, 1, "--config.total_steps=100000", "--config.log_every=1",
                           "--config.evals={}", "--heartbeat_timeout_s=20")
  log = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (log.exists() and len(metrics.read_jsonl(str(log))) >= 3):
    assert all(p.poll() is None for p in procs), [p.stdout.read() for p in procs]
    assert time.time() < deadline
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGKILL)
  t0 = time.time()
  out, _ = procs[0].communicate(timeout=120)
  waited = time.time() - t0
  assert procs[0].returncode != 0
  assert waited < 60, waited
  assert "stopped sending heartbeats" in out or "unhealthy" in out, out[-3000:]


class _MeanCosine:
  """A mean over examples: accumulation over micro-batches must give exactly its gradient."""

  def loss(self, model, params, batch, rng, *, train=True):
    zimg, ztxt, _ = model.apply({"params": params}, batch["image"], batch["text"], train=train)
    return 1.0 - (zimg * ztxt).sum(-1).mean(), {}


_mean_cosine = _MeanCosine()


@pytest.mark.slow
def test_grad_accumulation_equals_one_big_batch():
  config = config_lib.load_config_file(DEMO_SIGLIP)
  config.optimizer.name = "sgd"    # Update = -lr * grad: compares the gradients themselves.
  config.optimizer.warmup_steps = 0
  config.optimizer.lr = 0.5
  tok = tok_lib.train(digits.Digits("train").texts(), config.data.vocab_size)
  config.model.text.vocab_size = tok.vocab_size
  batch = loader.train_dataset(config.data.train, batch_size=64, seed=0,
                               context=dict(tokenizer=tok, text_len=16))[0].inputs
  mesh, rules = sh.make_mesh(dict(data=-1)), sh.get_rules("dp")
  model = models.build(config.model)
  tx, schedule = optim.make_optimizer(config.optimizer, 100)
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, _ = state_lib.create(model, _mean_cosine, tx, spec, 0, mesh, rules)
    before = nn.unbox(state.params)
    deltas = {}
    for k in (1, 4):
      new, m = jax.jit(lambda s, b, k=k: step_lib.train_step(
          s, b, model=model, objective=_mean_cosine, tx=tx, schedule=schedule,
          grad_accum_steps=k))(state, batch)
      deltas[k] = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                               nn.unbox(new.params), before)
  flat1, flat4 = (np.concatenate([x.ravel() for x in jax.tree.leaves(deltas[k])])
                  for k in (1, 4))
  assert np.linalg.norm(flat1) > 0
  assert np.linalg.norm(flat4 - flat1) <= 1e-5 * np.linalg.norm(flat1)
