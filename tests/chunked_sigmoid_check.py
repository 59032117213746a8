"""The 8-device checks of tests/test_chunked_sigmoid.py, run in a subprocess.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/chunked_sigmoid_check.py \
        values,memory,train_step

The flag must be set before jax starts, which a pytest process that already imported jax
cannot do, hence a separate process. Each check prints progress to stderr; the last line of
stdout is one JSON object {check: results}, which the tests assert on (this script asserts
nothing, so that every number reaches the test report).
"""

import functools
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from digit_batches import digit_batches  # tests/ is this script's directory.
from jax.sharding import NamedSharding, PartitionSpec as P

from bigvl import models, objectives, optim
from bigvl import sharding as sh
from bigvl import state as state_lib
from bigvl import step as step_lib
from bigvl.kernels.contrastive_loss import sigmoid_loss
from bigvl.objectives.chunked import allgather_sigmoid_loss, chunked_sigmoid_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, B = 10.0, -4.0
# (mesh, batch axes): all 8 devices on one axis; two axes; and a ring of 2 (the shortest,
# no loop iterations) with the batch on `data` only, replicated over fsdp=4.
MESHES = [({"data": 8}, ("data",)),
          ({"data": 2, "fsdp": 4}, ("data", "fsdp")),
          ({"data": 2, "fsdp": 4}, ("data",))]


def log(*args):
  print(*args, file=sys.stderr, flush=True)


def embeddings(n, d, seed=0):
  """Random unit-norm (n, d) float32 pairs; texts lean towards their image (real positives)."""
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  zimg = unit(rng.standard_normal((n, d)))
  ztxt = unit(rng.standard_normal((n, d)) + 2.0 * zimg)
  return zimg.astype(np.float32), ztxt.astype(np.float32)


def exact(zimg, ztxt):
  """Loss and gradients (zimg, ztxt, t, b) in float64 NumPy, from the closed form."""
  x, y = zimg.astype(np.float64), ztxt.astype(np.float64)
  n = x.shape[0]
  s = x @ y.T
  z = 2.0 * np.eye(n) - 1.0
  logits = T * s + B
  g = -z / (1.0 + np.exp(z * logits)) / n          # dloss/dlogits.
  loss = np.sum(np.logaddexp(0.0, -z * logits)) / n
  return loss, (T * g @ y, T * g.T @ x, np.sum(g * s), np.sum(g))


def rel(got, want):
  """Normwise relative error ||got - want|| / ||want|| (float64)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def value_and_grads(f):
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))


def errors(got, want):
  (gv, gg), (wv, wg) = got, want
  out = {"loss": rel(gv, wv)}
  out.update({k: rel(g, w) for k, g, w in zip(("zimg", "ztxt", "t", "b"), gg, wg)})
  return out


def check_values(n=1024, d=64):
  """Chunked (xla, pallas) and all-gather losses vs the dense loss, on each mesh."""
  zimg, ztxt = embeddings(n, d)
  t, b = jnp.float32(T), jnp.float32(B)
  dense = value_and_grads(sigmoid_loss)(jnp.asarray(zimg), jnp.asarray(ztxt), t, b)
  truth = exact(zimg, ztxt)
  out = {"dense_vs_exact": errors(dense, truth)}
  for mesh_cfg, axes in MESHES:
    mesh = sh.make_mesh(mesh_cfg)
    spec = NamedSharding(mesh, P(axes, None))
    x, y = jax.device_put(zimg, spec), jax.device_put(ztxt, spec)
    name = "x".join(f"{k}={v}" for k, v in mesh_cfg.items()) + "/" + ",".join(axes)
    impls = ("xla", "pallas") if len(axes) > 1 or mesh_cfg.get("data") == 8 else ("xla",)
    for impl in impls:
      t0 = time.perf_counter()
      got = value_and_grads(functools.partial(chunked_sigmoid_loss, mesh=mesh,
                                              batch_axes=axes, impl=impl))(x, y, t, b)
      out[f"chunked[{impl}] {name}"] = errors(got, dense)
      out[f"chunked[{impl}] {name} vs exact"] = errors(got, truth)
      # The gradients come back sharded like the inputs: nothing was gathered.
      out[f"chunked[{impl}] {name} sharding"] = [
          str(got[1][0].sharding.spec), str(got[1][1].sharding.spec)]
      log(f"values: chunked[{impl}] {name}: {time.perf_counter() - t0:.1f}s")
    got = value_and_grads(functools.partial(allgather_sigmoid_loss, mesh=mesh,
                                            batch_axes=axes))(x, y, t, b)
    out[f"allgather {name}"] = errors(got, dense)
  # bfloat16 embeddings: dtypes kept, values near the float32 loss.
  mesh = sh.make_mesh({"data": 8})
  spec = NamedSharding(mesh, P("data", None))
  xb, yb = (jax.device_put(jnp.asarray(a, jnp.bfloat16), spec) for a in (zimg, ztxt))
  got = value_and_grads(functools.partial(chunked_sigmoid_loss, mesh=mesh,
                                          batch_axes=("data",)))(xb, yb, t, b)
  out["bf16"] = {"dtypes": [str(g.dtype) for g in got[1]], **errors(got, dense)}
  return out


def check_memory(n=16384, d=64):
  """Compiled temp bytes per device of loss-and-gradients at batch n over data=8."""
  mesh = sh.make_mesh({"data": 8})
  axes = ("data",)
  emb = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=NamedSharding(mesh, P(axes, None)))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))

  def temp(f):
    t0 = time.perf_counter()
    compiled = value_and_grads(f).lower(emb, emb, scalar, scalar).compile()
    hlo = compiled.as_text()
    return {"temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
            "collective_permutes": hlo.count("collective-permute-start") or
                                   hlo.count("collective-permute("),
            "all_gathers": hlo.count("all-gather-start") or hlo.count("all-gather("),
            "compile_s": round(time.perf_counter() - t0, 1)}

  out = {"n": n, "d": d, "devices": 8,
         "block_logits_bytes": (n // 8) ** 2 * 4, "local_logits_bytes": (n // 8) * n * 4}
  for impl in ("xla", "pallas"):
    out[f"chunked[{impl}]"] = temp(functools.partial(chunked_sigmoid_loss, mesh=mesh,
                                                     batch_axes=axes, impl=impl))
    log(f"memory: chunked[{impl}] {out[f'chunked[{impl}]']}")
  out["allgather"] = temp(functools.partial(allgather_sigmoid_loss, mesh=mesh, batch_axes=axes))
  out["gspmd_dense"] = temp(sigmoid_loss)
  log(f"memory: allgather {out['allgather']}, gspmd dense {out['gspmd_dense']}")
  return out


def check_batch_axes():
  """sharding.current_batch_axes() under several meshes and rules."""
  cases = [({"data": 8}, "dp"), ({"data": 2, "fsdp": 4}, "fsdp"), ({"data": 1, "fsdp": 8}, "dp"),
           ({"data": 4, "tensor": 2}, "fsdp_tp"), ({"data": 2, "fsdp": 4}, [("batch", "data")]),
           ({"data": 8}, [("embed", "data")])]
  out = {}
  for mesh_cfg, rules in cases:
    with jax.set_mesh(sh.make_mesh(mesh_cfg)), nn.logical_axis_rules(sh.get_rules(rules)):
      eager = sh.current_batch_axes()
      traced = []
      jax.jit(lambda x: traced.append(sh.current_batch_axes()) or x)(1.0)
    out[f"{mesh_cfg} {rules}"] = [list(eager), list(traced[0])]
  return out


# Correctness, not XLA's code quality: fast compiles for both paths alike.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def check_train_step(steps=3, mesh_cfg=None, rules="dp"):
  """The demo SigLIP train step on 8 devices, chunked=False vs True, same params and data."""
  from bigvl import config_lib
  config = config_lib.load_config_file(
      os.path.join(ROOT, "configs/demo/siglip_digits.py") + f":steps={steps},batch=64")
  config.model.text.vocab_size = 64
  mesh = sh.make_mesh(mesh_cfg or {"data": 8})
  rules = sh.get_rules(rules)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  model = models.build(config.model)
  batches = digit_batches(steps, config.batch_size, config.data.text_len, 64)
  out = {}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batches = [sh.to_global_batch(bt, mesh, rules) for bt in batches]
    batch_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batches[0])
    dense_obj = objectives.build(dict(config.objective.to_dict(), chunked=False))
    state0, shardings = state_lib.create(model, dense_obj, tx, batch_spec, config.seed, mesh,
                                         rules)
    batch_shardings = jax.tree.map(lambda x: x.sharding, batches[0])
    for chunked in (False, True):
      objective = objectives.build(dict(config.objective.to_dict(), chunked=chunked))
      t0 = time.perf_counter()
      step_fn = jax.jit(
          functools.partial(step_lib.train_step, model=model, objective=objective, tx=tx,
                            schedule=schedule),
          in_shardings=(shardings, batch_shardings),
          out_shardings=(shardings, NamedSharding(mesh, P()))
      ).lower(state0, batches[0]).compile(compiler_options=FAST_COMPILE)
      hlo = step_fn.as_text()
      state, losses = state0, []
      for bt in batches:
        state, m = step_fn(state, bt)
        losses.append(float(m.metrics["train/loss"]))
      out[f"chunked={chunked}"] = {
          "losses": losses,
          # Proof that the ring ran (and that the dense step has none).
          "collective_permutes": hlo.count("collective-permute"),
          "seconds": round(time.perf_counter() - t0, 1)}
      log(f"train_step chunked={chunked}: {out[f'chunked={chunked}']}")
  return out


CHECKS = {"values": check_values, "memory": check_memory, "batch_axes": check_batch_axes,
          "train_step": check_train_step,
          # Params split over fsdp as well, the batch over ("data", "fsdp").
          "train_step_fsdp": functools.partial(check_train_step,
                                               mesh_cfg={"data": 2, "fsdp": 4}, rules="fsdp")}


def main(names):
  assert jax.device_count() == 8, (
      f"{jax.device_count()} devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8")
  results = {}
  for name in names:
    t0 = time.perf_counter()
    results[name] = CHECKS[name]()
    log(f"{name}: {time.perf_counter() - t0:.1f}s")
  print(json.dumps(results))


if __name__ == "__main__":
  main(sys.argv[1].split(",") if len(sys.argv) > 1 else list(CHECKS))
