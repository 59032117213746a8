"""CLIP (softmax contrastive) on the built-in digits image-text set; the SigLIP demo's twin.

    python -m bigvl.train --config configs/demo/clip_digits.py --workdir workdirs/clip_digits

The SigLIP demo's data, towers, schedule and zero-shot eval (`eval/zeroshot_digits/top1`;
README.md has what it reaches) with CLIP's loss, logit scale and text tower.
"""

import siglip_digits  # The config's own directory is importable.


def get_config(arg=None):
  c = siglip_digits.get_config(arg)
  c.model.temperature_init = 1 / 0.07      # CLIP's initial logit scale.
  c.model.bias_init = None                 # No bias in the softmax loss.
  # CLIP's text tower: causal mask, pooled at the EOS token.
  c.model.text.causal = True
  c.model.text.pool = "eos"
  c.objective = dict(name="clip", loss_impl="xla")  # loss_impl: xla | pallas.
  return c
