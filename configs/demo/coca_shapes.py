"""CoCa on the built-in shapes captions: contrastive + captioning losses in one model;
the CapPa demo's data, schedule and towers.

    python -m bigvl.train --config configs/demo/coca_shapes.py --workdir workdirs/coca_shapes

CoCa (Yu et al., 2022, "Contrastive Captioners are Image-Text Foundation Models"): the
decoder's first (unimodal) layers embed the text for a contrastive loss against an
attention-pooled image embedding; the rest cross-attend to the image tokens and caption.
Evaluates greedy captions of the held-out images (`eval/captions/exact_match`) and
zero-shot colour classification of single shapes with prompts "a {} circle.", "a {}
square.", "a {} triangle." (`eval/zeroshot_colors/top1`). Arg: `steps=N,batch=N`.
"""

import cappa_shapes  # The config's own directory is importable.


def get_config(arg=None):
  c = cappa_shapes.get_config(arg)
  c.model = dict(
      name="coca",
      image=cappa_shapes.tower(patch_size=8, posemb="learn"),       # 32x32 -> 16 tokens.
      # One text-only layer gives the contrastive text embedding; two caption.
      decoder=dict(cappa_shapes.tower(vocab_size=None, max_len=16), depth=3, unimodal_depth=1),
      embed_dim=64,
      temperature_init=10.0,
      dtype="float32",
  )
  c.objective = dict(name="coca", contrastive_weight=1.0, caption_weight=2.0)
  c.evals = dict(
      captions=c.evals.captions,
      zeroshot_colors=dict(name="zeroshot", data=dict(
          name="shapes", split="test", task="color", pp="value_range(-1, 1)")),
  )
  return c
