"""The planner (`python -m bigvl.plan`): named topologies, model FLOPs against an analytic
count, the SigLIP B/16 pod plan that fits and the So400m/14 plan that does not (slow: they
compile on 256 and 8 simulated devices), and the planner's memory prediction against the
compiled step of the run as the train loop builds it (tests/plan_memory_check.py).
"""

import json
import os
import subprocess
import sys

import pytest

from bigvl import config_lib, model_flops, plan as plan_lib, run as run_lib
from bigvl.models import sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2 ** 30


def _cli(*args, timeout=900):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "bigvl.plan", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------- topologies


@pytest.mark.unit
def test_named_topologies():
  hw = plan_lib.hardware("v5e-256")
  assert (hw.devices, hw.memory_gib, hw.peak_tflops) == (256, 16.0, 197.0)
  hw = plan_lib.hardware("v4-128")      # TensorCores: 64 chips, 32 GiB each.
  assert (hw.devices, hw.memory_gib) == (64, 32.0)
  assert plan_lib.hardware("v5p-128").devices == 64
  assert plan_lib.hardware("h100x64").devices == 64
  assert plan_lib.hardware("v5e-256", devices=8).devices == 8  # Explicit wins.
  with pytest.raises(ValueError, match="unknown"):
    plan_lib.hardware("tpu-9000")
  with pytest.raises(ValueError, match="multiple of 2"):
    plan_lib.hardware("v4-7")
  with pytest.raises(ValueError, match="--devices"):
    plan_lib.hardware()


# ------------------------------------------------------------------- FLOPs


def _tower_flops(width, depth, mlp, tokens, token_matmul_params, probe_params=0):
  """6 x (matmul params x the tokens they see) + attention (fwd 4 T^2 D, x3 with backward)."""
  block = 4 * width * width + 2 * width * mlp
  matmul = 6 * tokens * (depth * block + token_matmul_params)
  attention = 12 * depth * tokens * tokens * width
  return matmul + attention + 6 * probe_params


def siglip_analytic_flops(variant: str, res: int, text_len: int, batch: int) -> float:
  """Forward + backward FLOPs per example of a SigLIP two-tower, by hand."""
  d = sizes.parse_variant(variant)
  w, depth, mlp, p = d["width"], d["depth"], d["mlp_dim"], d["patch_size"]
  t_img = (res // p) ** 2
  # Image: patch embedding on every token; MAP head: k, v on every token, q/out/MLP on 1.
  img = _tower_flops(w, depth, mlp, t_img, 3 * p * p * w + 2 * w * w,
                     probe_params=2 * w * w + 2 * w * mlp) + 12 * t_img * w  # MAP attention.
  # Text: the same blocks on text_len tokens; the head on the last token.
  txt = _tower_flops(w, depth, mlp, text_len, 0, probe_params=w * w)
  logits = 6 * batch * w   # This example's row and column of the B x B logits.
  return img + txt + logits


@pytest.mark.unit
@pytest.mark.parametrize("rel,variant,res", [("configs/siglip/b16.py", "B/16", 224),
                                             ("configs/siglip/so400m14.py:res=384",
                                              "So400m/14", 384)])
def test_model_flops_per_example_match_an_analytic_count(rel, variant, res):
  config = config_lib.load_config_file(os.path.join(ROOT, rel))
  config = plan_lib.planning_config(config_lib.with_defaults(config), [])
  run = run_lib.build(config, None)
  got = model_flops.of_run(run).per_example
  want = siglip_analytic_flops(variant, res, config.data.text_len, config.batch_size)
  print(f"{rel}: bigvl {got:.5g}, analytic {want:.5g}, ratio {got / want:.4f}")
  assert abs(got / want - 1) < 0.05


# ------------------------------------------------------------------- fits / does not fit


@pytest.mark.integration
@pytest.mark.slow  # Compiles B/16 for 256 simulated devices: about 1 minute on 2 cores.
def test_siglip_b16_batch_32k_fits_256_devices_of_16_gib(tmp_path):
  out = tmp_path / "plan.json"
  r = _cli("--config", "configs/siglip/b16.py", "--devices", "256", "--device_memory_gib", "16",
           "--peak_tflops", "197", "--json", str(out))
  print(r.stdout, r.stderr[-3000:])
  assert r.returncode == 0, r.stderr[-3000:]
  p = json.loads(out.read_text())
  assert p["fits"] is True and p["batch_size"] == 32768 and p["per_device_batch"] == 128
  assert p["mesh"] == {"data": 1, "fsdp": 256, "tensor": 1}
  assert p["params"]["img"] > 9e7 and p["params"]["txt"] > 1e8
  assert p["model_flops_per_example"] > 1e11
  assert 0 < p["state_bytes"]["total"] < GIB and p["temp_bytes"] > 0
  assert p["predicted_bytes"] <= 16 * GIB
  assert {"all-gather", "all-reduce"} <= set(p["collectives"])
  assert p["step_time_s"] > 0 and p["days"] > 0
  for figure in ("params:", "model FLOPs per example", "train state", "step temps",
                 "collectives per step per device", "all-gather", "days for", "fits"):
    assert figure in r.stdout, figure


@pytest.mark.integration
@pytest.mark.slow  # Compiles So400m/14 at 384px for 8 simulated devices.
def test_so400m_384_without_fsdp_does_not_fit_8_devices_and_names_the_fix(tmp_path):
  out = tmp_path / "plan.json"
  r = _cli("--config", "configs/siglip/so400m14.py:res=384", "--devices", "8",
           "--device_memory_gib", "16", "--config.sharding.rules=dp",
           "--config.sharding.mesh.fsdp=1", "--config.sharding.mesh.data=-1", "--json", str(out))
  print(r.stdout, r.stderr[-3000:])
  assert r.returncode == 1, r.stderr[-3000:]
  p = json.loads(out.read_text())
  assert p["fits"] is False and p["predicted_bytes"] > 16 * GIB
  last = r.stdout.strip().splitlines()[-1]
  assert last.startswith("DOES NOT FIT"), last
  assert "--config.sharding.rules=fsdp" in last
  assert "grad_accum_steps" in last
  assert "remat=full" not in last  # Both towers already recompute.


# ------------------------------------------------------------------- prediction vs compiled


@pytest.mark.integration
@pytest.mark.slow  # Two B/16-sized configs compiled twice each on 8 simulated devices.
def test_predicted_memory_within_10_percent_of_the_compiled_train_step():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_disable_hlo_passes=cse_barrier_expander")
  r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "plan_memory_check.py")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.loads(r.stdout.strip().splitlines()[-1])
  assert len(rows) == 2
  for row in rows:
    print(row)
    assert abs(row["predicted"] / row["compiled"] - 1) < 0.10, row


@pytest.mark.unit
def test_frozen_params_carry_no_optimizer_state_in_the_plan():
  """LiT's locked image tower has no Adam moments: the state the planner counts is params +
  2 moments of the text tower (and the temperature) only."""
  config = config_lib.load_config_file(os.path.join(ROOT, "configs/lit/lit_b16.py:smoke"))
  p = plan_lib.plan(config, plan_lib.hardware(devices=1, memory_gib=16), compile=False)
  trainable = p.params["total"] - p.params["img"]
  assert p.state_bytes["params"] == 4 * p.params["total"]
  # Two float32 moments per trainable param, plus Adam's step counters (a few bytes).
  assert 0 <= p.state_bytes["opt_state"] - 8 * trainable < 64, (p.state_bytes, p.params)
