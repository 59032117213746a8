"""Scale-out memory of a B/16 two-tower model (FSDP, remat) and tools/bench_train.py.

The B/16 numbers come from `tests/scale_memory_check.py`, run in a subprocess: 8 simulated
devices need XLA_FLAGS before jax starts, which this pytest process (jax already imported)
cannot do; the remat check needs an XLA flag as well (below). Nothing is allocated: every
number is XLA's compiled `memory_analysis()`, bytes per device.

- FSDP: the train state (params + AdamW mu, nu) per device is >= 6x smaller at fsdp=8 than
  data parallel on 8 devices (measured 7.96x: 2.43 GB vs 0.31 GB; what stays replicated are
  the per-head biases, the MLP-hidden biases and the scalars).
- remat: `full` lowers the compiled temp memory of a B/16 step below `none`. On CPU this
  holds only with XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander: XLA:CPU drops
  remat's optimization barriers before CSE, which then merges the recomputation with the
  forward pass, so without the flag all policies keep every activation (same temp bytes);
  XLA:GPU drops the barriers only after scheduling. See tools/bench_train.py.

Fast (~60-75 s in all on 2 shared cores): the bench tool on the demo config (timed, compile
only, a bad override), and the FSDP ratio from the shardings' shard shapes (~11 s). Slow
(`-m slow`): the same ratio from the compiled init (~85 s), remat (~2 min).
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import DEMO_SIGLIP, REPO

pytestmark = pytest.mark.integration

SCRIPT = os.path.join(REPO, "tests", "scale_memory_check.py")
TOOL = os.path.join(REPO, "tools", "bench_train.py")
EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
KEEP_BARRIERS = {"XLA_FLAGS": "--xla_disable_hlo_passes=cse_barrier_expander",
                 "JAX_PLATFORMS": "cpu"}
EIGHT_KEEP_BARRIERS = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                                    "--xla_disable_hlo_passes=cse_barrier_expander",
                       "JAX_PLATFORMS": "cpu"}
MAX_FSDP_STEP_TEMP_RATIO = 0.3
MIN_FSDP_RATIO = 6.0

RESULT_FIELDS = ("config", "devices", "device_kind", "mesh", "batch_size", "step_time_s",
                 "examples_per_sec", "model_flops_per_step", "model_flops_per_example",
                 "flops_per_device_per_step", "tflops_per_device", "mfu", "hfu", "temp_bytes",
                 "argument_bytes", "output_bytes", "alias_bytes", "generated_code_bytes",
                 "peak_bytes_estimate", "collectives", "dot_flops_per_device",
                 "all_reduce_sliced_bytes")


def _run_check(name: str, env: dict, timeout=900) -> dict:
  proc = subprocess.run([sys.executable, SCRIPT, name], cwd=REPO,
                        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"{SCRIPT} {name} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  print(proc.stderr)
  return json.loads(proc.stdout.strip().splitlines()[-1])[name]


def _run_tool(args, timeout=600):
  proc = subprocess.run([sys.executable, TOOL, *args], cwd=REPO,
                        env=dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=timeout)
  return proc


def _gb(n):
  return f"{n / 1e9:.3f} GB"


# ------------------------------------------------------------------------------------------
# tools/bench_train.py


@pytest.mark.slow
def test_bench_train_times_demo_config(tmp_path):
  out = tmp_path / "result.json"
  proc = _run_tool(["--config", DEMO_SIGLIP, "--config.total_steps=10", "--steps", "3",
                    "--warmup", "1", "--out", str(out)])
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, f"stdout must be one JSON object, got:\n{proc.stdout}"
  result = json.loads(lines[0])
  print(json.dumps(result, indent=1))
  assert json.loads(out.read_text()) == result
  missing = [k for k in RESULT_FIELDS if k not in result]
  assert not missing, missing
  assert result["config"] == DEMO_SIGLIP and result["overrides"] == {"total_steps": "10"}
  assert result["devices"] == 1 and result["device_kind"] == "cpu"
  assert result["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and result["batch_size"] == 64
  assert result["steps"] == 3 and result["step_time_s"] > 0
  assert result["examples_per_sec"] == pytest.approx(64 / result["step_time_s"])
  assert result["flops_per_device_per_step"] > 0 and result["tflops_per_device"] > 0
  # Model FLOPs (bigvl/model_flops.py: the traced loss, forward + backward) of the global batch.
  assert result["model_flops_per_step"] > 0
  assert result["model_flops_per_example"] == pytest.approx(result["model_flops_per_step"] / 64)
  assert result["mfu"] is None and result["hfu"] is None  # No peak known for a CPU.
  assert result["peak_tflops"] is None
  assert result["temp_bytes"] > 0 and result["argument_bytes"] > 0
  # The state is donated: its buffers are reused for the new state.
  assert result["alias_bytes"] >= result["state_bytes_per_device"] > 0
  assert result["peak_bytes_estimate"] == (result["argument_bytes"] + result["output_bytes"]
                                           + result["temp_bytes"] - result["alias_bytes"])
  assert "step 3/3" in proc.stderr  # Progress goes to stderr.
  assert result["collectives"] == {}  # One device: nothing to communicate.
  assert result["dot_flops_per_device"] > 0


@pytest.mark.slow
def test_bench_train_compile_only_and_peak(tmp_path):
  # One block per tower: compiles in half the time of the demo's two.
  proc = _run_tool(["--config", DEMO_SIGLIP + ":batch=16", "--compile_only",
                    "--peak_tflops", "100", "--config.model.image.remat=full",
                    "--config.model.image.depth=1", "--config.model.text.depth=1"])
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout)
  assert result["compile_only"] and result["batch_size"] == 16
  assert result["step_time_s"] is None and result["examples_per_sec"] is None
  assert result["mfu"] is None and result["hfu"] is None  # Nothing timed: no MFU.
  assert result["peak_tflops"] == 100.0
  assert result["flops_per_device_per_step"] > 0 and result["temp_bytes"] > 0
  assert result["model_flops_per_step"] > 0  # Counted without running (remat not counted).
  assert result["remat"] == {"image": "full", "text": "none"}
  assert "--keep_remat_barriers" in proc.stderr  # Warned: remat saves nothing on plain CPU.


def test_bench_train_bad_override_is_an_error():
  proc = _run_tool(["--config", DEMO_SIGLIP, "--config.batch_sise=8", "--compile_only"])
  assert proc.returncode == 1 and proc.stdout == ""
  assert "batch_sise" in proc.stderr and "batch_size" in proc.stderr


# ------------------------------------------------------------------------------------------
# FSDP: train state per device, data=8 (dp) vs fsdp=8.


def _assert_fsdp_ratio(state, key):
  dp, fsdp = state["dp"], state["fsdp"]
  print(f"B/16 train state per device ({key}): dp {_gb(dp[key])}, fsdp {_gb(fsdp[key])}, "
        f"ratio {dp[key] / fsdp[key]:.2f}x; params alone {_gb(dp['params_bytes'])} -> "
        f"{_gb(fsdp['params_bytes'])}")
  assert dp["params"] == fsdp["params"] > 200e6  # Really B/16 (203M).
  assert dp["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert fsdp["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  # Data parallel replicates params + AdamW's mu and nu: 3 float32 copies (+ a few scalars).
  assert dp[key] == pytest.approx(3 * 4 * dp["params"], rel=1e-3)
  assert dp[key] / fsdp[key] >= MIN_FSDP_RATIO
  assert fsdp[key] >= dp[key] / 8  # Nothing is sharded more than 8 ways.


def test_fsdp_state_per_device_from_shardings():
  _assert_fsdp_ratio(_run_check("state_analytic", EIGHT, timeout=300), "analytic_bytes")


@pytest.mark.slow
def test_fsdp_reduces_b16_state_memory_6x_compiled():
  state = _run_check("state", EIGHT)
  _assert_fsdp_ratio(state, "output_bytes")
  for rules in ("dp", "fsdp"):  # The compiled program holds what the shardings say.
    assert state[rules]["output_bytes"] == pytest.approx(state[rules]["analytic_bytes"],
                                                         rel=1e-3)


# ------------------------------------------------------------------------------------------
# remat: temp memory of the compiled B/16 step.


@pytest.mark.slow
def test_remat_full_lowers_b16_step_temp_memory():
  r = _run_check("remat", KEEP_BARRIERS)
  none, full, dots = (r[p]["temp_bytes"] for p in ("none", "full", "dots_saveable"))
  print(f"B/16 step temp per device, batch {r['batch_size']} on {r['devices']} device(s): "
        f"none {_gb(none)}, full {_gb(full)} ({none / full:.1f}x less), dots_saveable "
        f"{_gb(dots)}; FLOPs per step: none {r['none']['flops_per_device_per_step']:.3g}, "
        f"full {r['full']['flops_per_device_per_step']:.3g}")
  assert r["barriers_kept"]
  assert full < none
  assert full <= dots < none  # dots_saveable keeps the matmul outputs: in between.
  # Full remat recomputes each block's forward pass once more: more FLOPs, not fewer.
  assert r["full"]["flops_per_device_per_step"] > r["none"]["flops_per_device_per_step"]


# ------------------------------------------------------------------------------------------
# FSDP: the step's temporary memory, layer-scanned (-m scale: ~2 min of B/16 compiles).


@pytest.mark.scale
def test_fsdp_step_temp_memory_b16_scanned():
  r = _run_check("fsdp_step", EIGHT_KEEP_BARRIERS)
  dp, fsdp = r["dp"], r["fsdp"]
  print(f"B/16 step temp per device, 8 per device, remat full, scanned: dp {_gb(dp['temp_bytes'])}"
        f", fsdp {_gb(fsdp['temp_bytes'])}, ratio {r['temp_ratio']:.3f}; fsdp collectives "
        f"{fsdp['collectives']}, all-reduce bytes only sliced afterwards "
        f"{fsdp['all_reduce_sliced_bytes']}")
  assert r["barriers_kept"] and r["scan"] and r["batch_size"] == 64
  assert dp["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert fsdp["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert r["temp_ratio"] <= MAX_FSDP_STEP_TEMP_RATIO
  assert dp["dot_flops"] == pytest.approx(fsdp["dot_flops"], rel=1e-3)  # Same work per device.
  # Gradients reach their shards by reduce-scatter, or, on XLA:CPU (which has no
  # ReduceScatterCreator pass), by an all-reduce whose result is only dynamic-sliced: the
  # pattern the GPU and TPU compilers rewrite into a reduce-scatter.
  scattered = fsdp["collectives"].get("reduce-scatter", {}).get("bytes", 0)
  reduced = fsdp["collectives"].get("all-reduce", {}).get("bytes", 0)
  assert scattered + fsdp["all_reduce_sliced_bytes"] >= 0.9 * (scattered + reduced)
