"""Runs the zero-shot, retrieval, captioning and perplexity evaluators on fixed random models and prints
their metrics as one JSON line; tests/test_eval_suite.py runs it on 1 and on 8 devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/eval_devices_check.py
"""

import json

import jax
import numpy as np

from bigvl import models, sharding as sh
from bigvl.data import digits, shapes, tokenizer as tok_lib
from bigvl.evaluators import EvalContext, build

TOWER = dict(width=32, depth=1, mlp_dim=64, num_heads=4)


def main():
  mesh = sh.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  rules = sh.get_rules("dp")
  out = {"devices": jax.device_count()}
  tok = tok_lib.train(digits.Digits("train").texts(), vocab_size=96)
  tt = models.build(dict(name="two_towers", image=dict(patch_size=4, pool="gap", **TOWER),
                         text=dict(vocab_size=tok.vocab_size, max_len=16, pool="last", **TOWER),
                         embed_dim=16))
  params = tt.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 1), np.float32),
                   np.zeros((1, 16), np.int32))["params"]
  ctx = EvalContext(model=tt, tokenizer=tok, text_len=16, mesh=mesh, rules=rules)
  pp = "resize(16)|value_range(-1, 1)"
  with jax.set_mesh(mesh):
    data = dict(name="digits", split="test", pp=pp)
    for name, cfg in (("zeroshot", dict(name="zeroshot", data=data, batch_size=64)),
                      ("retrieval", dict(name="retrieval", data=data, batch_size=64))):
      out.update({f"{name}/{k}": v for k, v in build(name, cfg, ctx).run(params).items()})
    stok = tok_lib.train(shapes.Shapes("train", n=2000).texts(), vocab_size=64)
    cap = models.build(dict(name="captioner", image=dict(patch_size=8, posemb="learn", **TOWER),
                            decoder=dict(vocab_size=stok.vocab_size, max_len=16, **TOWER)))
    cparams = cap.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32),
                       np.zeros((1, 16), np.int32))["params"]
    cctx = EvalContext(model=cap, tokenizer=stok, text_len=16, mesh=mesh, rules=rules)
    shapes_data = dict(name="shapes", split="test", n=48, pp="value_range(-1, 1)")
    for name, cfg in (("captioning", dict(name="captioning", data=shapes_data, batch_size=16,
                                          show=0)),
                      ("scoring", dict(name="scoring_zeroshot", batch_size=16,
                                       data=dict(shapes_data, task="color"))),
                      ("perplexity", dict(name="perplexity", batch_size=16, data=dict(
                          shapes_data, pp="value_range(-1, 1)|choose_text|tokenize")))):
      out.update({f"{name}/{k}": v for k, v in build(name, cfg, cctx).run(cparams).items()})
  print(json.dumps(out))


if __name__ == "__main__":
  main()
