"""Model FLOPs (bigvl/model_flops.py), the peak table (bigvl/mfu.py) and train/mfu.

- The SigLIP demo's counted FLOPs equal a closed-form count of its matmuls (patch embedding,
  q/k/v/out projections, QK^T and PV, MLPs, MAP head, projections, the B x B logits): the
  forward exactly, forward + backward exactly 3x the forward less the patch embedding's input
  gradient (the image needs none); a frozen (LiT) image tower runs forward only.
- The count does not change with remat, grad_accum_steps or the attention / loss kernels.
- Every demo config is counted (captioning, CoCa, DINO's forward-only teacher, MAE, FLIP,
  Flamingo's frozen LM and vision tower).
- train/mfu as the loop logs it is model FLOPs x steps/s / (peak x devices).

Unit tests take ~30 s on 2 shared cores, building every demo config ~35 s; the 3-step run
of the loop (~40-90 s) is `-m slow`.
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DEMO_SIGLIP, REPO, missing_real_data
from bigvl import config_lib, metrics, mfu, model_flops

B = 8            # Batch of the closed-form checks (FLOPs scale with it; tracing does not).


def _config(**overrides):
  """The SigLIP demo, resolved as run.build resolves it (vocab filled in), with overrides."""
  c = config_lib.load_config_file(DEMO_SIGLIP)
  c.evals = {}
  c.batch_size = B
  c.model.text.vocab_size = 96
  c = config_lib.with_defaults(c)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def _spec(c):
  return {"image": jax.ShapeDtypeStruct((c.batch_size, 16, 16, 1), jnp.float32),
          "text": jax.ShapeDtypeStruct((c.batch_size, c.data.text_len), jnp.int32)}


def two_towers_forward(c, image_hw=16, channels=1) -> dict:
  """Closed-form forward FLOPs (2 per multiply-add) of the demo's two-tower model and loss.

  Returns {"patch", "image_tower" (patch included), "image_proj", "text", "loss"}.
  """
  m = c.model
  b, e = c.batch_size, m.embed_dim

  def block(n, d, f):  # q, k, v, out projections; QK^T and PV; the MLP's two matmuls.
    return 4 * 2 * b * n * d * d + 2 * 2 * b * n * n * d + 2 * 2 * b * n * d * f

  im = m.image
  p, d, f = im.patch_size, im.width, im.mlp_dim
  n = (image_hw // p) ** 2
  patch = 2 * b * n * (p * p * channels) * d
  # MAP head: a 1-token probe attends over the n tokens, then its MLP.
  map_head = (2 * b * d * d + 2 * 2 * b * n * d * d + 2 * 2 * b * n * d + 2 * b * d * d
              + 2 * 2 * b * d * f)
  image_tower = patch + im.depth * block(n, d, f) + map_head
  tx = m.text
  text = tx.depth * block(c.data.text_len, tx.width, tx.mlp_dim) + 2 * b * tx.width * e
  return dict(patch=patch, image_tower=image_tower, image_proj=2 * b * d * e, text=text,
              loss=2 * b * b * e)


@pytest.mark.unit
def test_siglip_demo_matches_closed_form():
  c = _config()
  f = model_flops.of_config(c, _spec(c))
  parts = two_towers_forward(c)
  forward = parts["image_tower"] + parts["image_proj"] + parts["text"] + parts["loss"]
  print(f"SigLIP demo, batch {B}: forward {forward:,}, step {f.per_step:,.0f}")
  assert f.forward == forward
  # Backward = 2x forward per matmul (input and weight gradients), except that the patch
  # embedding needs no input gradient: the image is data.
  assert f.per_step == 3 * forward - parts["patch"]
  assert f.per_example == f.per_step / B


@pytest.mark.unit
def test_frozen_image_tower_runs_forward_only():
  c = _config(**{"optimizer.frozen_pattern": "img/.*"})  # LiT.
  f = model_flops.of_config(c, _spec(c))
  parts = two_towers_forward(c)
  # Frozen tower: forward only (nothing below it needs gradients); its projection trains
  # (forward + weight gradient, no input gradient); text tower and loss: 3x.
  assert f.per_step == parts["image_tower"] + 2 * parts["image_proj"] + \
      3 * (parts["text"] + parts["loss"])


@pytest.mark.unit
def test_model_flops_do_not_depend_on_how_the_step_runs():
  base = model_flops.of_config(_config(), _spec(_config())).per_step
  variants = {
      "remat full": {"model.image.remat": "full", "model.text.remat": "full"},
      "remat dots_saveable": {"model.image.remat": "dots_saveable"},
      "grad_accum_steps 2": {"grad_accum_steps": 2},
      "grad_accum_steps 4": {"grad_accum_steps": 4},
      "attention pallas": {"model.image.attention_impl": "pallas",
                           "model.text.attention_impl": "pallas"},
      "loss pallas": {"objective.loss_impl": "pallas"},
  }
  for name, overrides in variants.items():
    c = _config(**overrides)
    assert model_flops.of_config(c, _spec(c)).per_step == base, name  # Exactly, not 1%.
  # What the rewrite avoids: traced as configured, remat's recomputed forward is counted.
  c = _config(**variants["remat full"])
  as_run, _ = model_flops.loss_jaxprs(c, _spec(c), reference=False)
  assert model_flops.jaxpr_flops(as_run) > 1.2 * base


@pytest.mark.unit
def test_reference_config_rewrites_only_how_it_runs():
  c = _config(**{"model.image.remat": "full", "model.text.attention_impl": "pallas",
                 "objective.loss_impl": "pallas", "grad_accum_steps": 4})
  ref = model_flops.reference_config(c)
  assert ref.model.image.remat == "none" and ref.model.text.remat == "none"
  assert ref.model.text.attention_impl == "xla" and ref.objective.loss_impl == "xla"
  assert ref.grad_accum_steps == 1
  assert ref.model.image.width == c.model.image.width and ref.batch_size == c.batch_size
  assert c.model.image.remat == "full"  # The run's config is not touched.


@pytest.mark.unit
def test_jaxpr_counter_primitives():
  x, w = jnp.ones((4, 8)), jnp.ones((8, 16))
  one = 2 * 4 * 8 * 16
  assert model_flops.jaxpr_flops(jax.make_jaxpr(jnp.dot)(x, w)) == one

  def scanned(x, w):  # 5 iterations of a (4, 8) x (8, 8) matmul.
    return jax.lax.scan(lambda c, _: (c @ w[:, :8], None), x, None, length=5)[0]
  assert model_flops.jaxpr_flops(jax.make_jaxpr(scanned)(x, w)) == 5 * 2 * 4 * 8 * 8

  def branches(x, w):  # The costlier branch counts.
    return jax.lax.cond(x.sum() > 0, lambda: (x @ w).sum(), lambda: x.sum())
  assert model_flops.jaxpr_flops(jax.make_jaxpr(branches)(x, w)) == one
  assert model_flops.jaxpr_flops(jax.make_jaxpr(jax.jit(jnp.dot))(x, w)) == one  # pjit body.

  # Batched dot: (3, 4, 8) x (3, 8, 16).
  a, b = jnp.ones((3, 4, 8)), jnp.ones((3, 8, 16))
  assert model_flops.jaxpr_flops(jax.make_jaxpr(jnp.matmul)(a, b)) == 3 * one

  # Strided patch convolution and its gradients: out elements x window x in features.
  img, kernel = jnp.ones((2, 16, 16, 3)), jnp.ones((4, 4, 3, 32))
  conv = lambda i, k: jax.lax.conv_general_dilated(
      i, k, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fwd = 2 * (2 * 4 * 4 * 32) * (4 * 4 * 3)
  assert model_flops.jaxpr_flops(jax.make_jaxpr(conv)(img, kernel)) == fwd
  both = jax.make_jaxpr(jax.grad(lambda i, k: conv(i, k).sum(), argnums=(0, 1)))(img, kernel)
  assert model_flops.jaxpr_flops(both) == 3 * fwd  # Input grad: a transposed conv, not 16x.
  # Grouped (depthwise) convolution: each output sums over its group's channels only.
  dw = lambda i, k: jax.lax.conv_general_dilated(
      i, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3)
  assert model_flops.jaxpr_flops(jax.make_jaxpr(dw)(img, jnp.ones((3, 3, 1, 3)))) == \
      2 * (2 * 16 * 16 * 3) * 9

  def loop(x, w):  # Unknown trip count with a matmul inside: refused, not under-counted.
    return jax.lax.while_loop(lambda c: c.sum() < 100, lambda c: c @ w[:, :8], x)
  with pytest.raises(ValueError, match="while loop"):
    model_flops.jaxpr_flops(jax.make_jaxpr(loop)(x, w))


# ------------------------------------------------------------------------------------------
# Peak table.


class _Device:
  def __init__(self, kind):
    self.device_kind = kind


@pytest.mark.unit
def test_peak_table_by_device_kind_and_dtype():
  peak = mfu.device_peak_tflops
  assert peak("NVIDIA H100 80GB HBM3") == 989.4            # SXM5.
  assert peak("NVIDIA H100 PCIe") == 756.0                 # Not the SXM peak.
  assert peak("NVIDIA H100 PCIe") != peak("NVIDIA H100 80GB HBM3")
  assert peak("NVIDIA H100 80GB HBM3", "float32") == 494.7  # TF32.
  assert peak("NVIDIA H100 PCIe", jnp.float32) == 378.0
  assert peak("NVIDIA H200") == 989.4
  assert peak("NVIDIA A100-SXM4-80GB") == peak("NVIDIA A100 80GB PCIe") == 312.0
  assert peak("NVIDIA A100-SXM4-40GB", np.dtype("float32")) == 156.0
  assert peak("NVIDIA H100 80GB HBM3", jnp.bfloat16) == peak("NVIDIA H100 80GB HBM3",
                                                              "float16")
  assert peak("TPU v4") == 275.0
  assert peak("TPU v5 lite") == 197.0 and peak("TPU v5e") == 197.0
  assert peak("TPU v5") == 459.0 and peak("TPU v5p") == 459.0
  assert peak("TPU v6 lite") == 918.0
  assert peak("cpu") is None and peak("TPU v4", "int8") is None
  assert mfu.peak_tflops(device=_Device("NVIDIA H100 PCIe"), dtype="float32") == 378.0
  assert mfu.peak_tflops(123.0, device=_Device("NVIDIA H100 PCIe")) == 123.0  # Configured wins.
  assert mfu.peak_tflops(0.0, device=_Device("cpu")) is None


@pytest.mark.unit
def test_rate_metrics():
  from bigvl import train
  m = train.rate_metrics(steps_per_sec=2.0, batch_size=64, model_flops_per_step=3e12,
                         compiled_flops_per_device=1e12, peak=100.0, devices=4)
  assert m["train/examples_per_sec"] == 128.0
  assert m["train/mfu"] == pytest.approx(3e12 * 2.0 / (100e12 * 4))
  assert m["train/tflops_per_device"] == pytest.approx(2.0)
  assert m["train/hfu"] == pytest.approx(2.0 / 100.0)
  m = train.rate_metrics(2.0, 64, 3e12, 1e12, None, 4)  # CPU: no peak.
  assert "train/mfu" not in m and "train/hfu" not in m and m["train/tflops_per_device"] == 2.0


# ------------------------------------------------------------------------------------------
# Every demo config; the loop's train/mfu.


def _demo_specs():
  out = []
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "demo", "*.py"))):
    if os.path.basename(path).startswith("flamingo"):
      out += [path + ":stage=lm", path + ":lm=/unused,vision=/unused"]
    else:
      out.append(path)
  return out


@pytest.mark.integration
@pytest.mark.slow  # Every demo config traced (about 20 s).
def test_every_demo_config_is_counted(tmp_path):
  from bigvl import run as run_lib
  lines = []
  for i, spec in enumerate(_demo_specs()):
    if missing_real_data(spec):
      print(f"{spec}: its data is not installed ({missing_real_data(spec)}); not counted")
      continue
    c = config_lib.load_config_file(spec)
    c.evals = {}
    if "vision=" in spec:  # Flamingo's second stage: a tokenizer trained here, no init.
      c.data.tokenizer, c.init_from, c.init_also = "", "", ()
    run = run_lib.build(c, str(tmp_path / str(i)))
    f = model_flops.of_run(run)
    lines.append(f"{os.path.relpath(spec, REPO)}: {f.per_step:.4g} per step, "
                 f"{f.per_step / f.forward:.3f}x forward")
    assert f.per_example == pytest.approx(f.per_step / run.config.batch_size)
    # Backward never costs more than 2x forward; frozen parts (DINO's teacher, Flamingo's
    # LM and vision tower) make it less.
    assert f.forward < f.per_step <= 3 * f.forward, spec
    if run.config.objective.name in ("dino", "flamingo"):
      assert f.per_step < 2.1 * f.forward, spec
  print("\n".join(lines))


@pytest.mark.integration
@pytest.mark.slow
def test_logged_mfu_is_model_flops_times_rate_over_peak(tmp_path, demo_config):
  from bigvl import run as run_lib
  from bigvl import train
  config = demo_config(**{"total_steps": 3, "log_every": 1, "batch_size": 16,
                          "peak_tflops": 1.0, "model.image.depth": 1, "model.text.depth": 1,
                          "compilation_cache_dir": ""})
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(config, workdir)
  flops = model_flops.of_run(run_lib.build(config, workdir))  # The tokenizer is cached there.
  rows = [r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "train/mfu" in r]
  assert len(rows) == 3
  for r in rows:
    assert r["train/mfu"] == pytest.approx(
        flops.per_step * r["train/steps_per_sec"] / (1.0 * 1e12 * jax.device_count()), rel=1e-6)
    # HFU: XLA's count of what ran, which adds the elementwise ops and the optimizer.
    assert r["train/hfu"] == pytest.approx(r["train/tflops_per_device"] / 1.0, rel=1e-6)
    assert r["train/hfu"] > r["train/mfu"]
