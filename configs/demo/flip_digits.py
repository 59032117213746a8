"""FLIP on the digits demo: SigLIP whose image tower encodes only half of each image's patches
while training, then (optionally) a short unmasked tuning phase started from it.

    python -m bigvl.train --config configs/demo/flip_digits.py --workdir workdirs/flip
    python -m bigvl.train --config configs/demo/flip_digits.py:init=workdirs/flip \\
        --workdir workdirs/flip_tuned

Masking drops the image tower's tokens from 16 to 8: fewer FLOPs per step (see
docs/self_supervised.md for the measured ratio). Evaluation is always unmasked. Arg:
`steps=N,batch=N,ratio=F,init=DIR` (`init` set: the unmasked tuning phase from DIR's
params and tokenizer, ratio 0, `tune_steps` steps at a tenth of the learning rate).
"""

import os

import siglip_digits  # The config's own directory is importable.

from bigvl.config_lib import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, steps=1500, batch=64, ratio=0.5, init="", tune_steps=300)
  c = siglip_digits.get_config(f"steps={arg.steps},batch={arg.batch}")
  c.objective.image_mask_ratio = arg.ratio
  if arg.init:
    c.init_from = arg.init
    c.data.tokenizer = os.path.join(arg.init, "tokenizer.model")  # The same token ids.
    c.objective.image_mask_ratio = 0.0
    c.total_steps = arg.tune_steps
    c.optimizer.lr = c.optimizer.lr / 10
    c.optimizer.warmup_steps = 0
    c.eval_every = arg.tune_steps
  return c
