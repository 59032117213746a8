"""SigLIP 2 on the built-in shapes captions, on a laptop CPU: SigLIP's sigmoid loss all
along, SILC's local-to-global self-distillation and TIPS-style masked prediction added for
the last 20% of the run (one EMA teacher), as SigLIP 2's recipe. The LocCa decoder terms
are not built yet (docs/siglip2.md).

    python -m bigvl.train --config configs/demo/siglip2_shapes.py --workdir workdirs/siglip2_shapes

Evaluates zero-shot colour classification of single held-out shapes
(`eval/zeroshot_colors/top1`) and a dense probe: a linear classifier of which shape (or
background) covers each 4x4 patch, from the frozen patch tokens
(`eval/dense_shapes/foreground_top1`, `top1`, `mean_class_top1`).
Args: `steps=N,batch=N,seed=N,distill=0|1` (distill=0: SigLIP alone, the ablation's
baseline).
"""

from bigvl.config_lib import parse_arg
import ml_collections


def tower(**kw):
  return dict(width=64, depth=2, mlp_dim=256, num_heads=4, **kw)


def get_config(arg=None):
  arg = parse_arg(arg, steps=2000, batch=64, seed=0, distill=1)
  c = ml_collections.ConfigDict()
  c.seed = arg.seed
  c.total_steps = arg.steps
  c.batch_size = arg.batch
  c.log_every = 100
  c.eval_every = 0                         # At the end.
  c.checkpoint_every = 1000

  # The image as it is is the teacher's view; two local crops of 16x16 are the student's.
  # No flip of the image: a mirrored picture would contradict "left of" / "right of".
  c.data = dict(
      train=dict(name="shapes", split="train",
                 pp="multi_crop(32, 16, num_global=0, num_local=2, local_scale=(0.2, 0.5), "
                    "keep=True)|value_range(-1, 1)|value_range(-1, 1, key='crops_local')|"
                    "choose_text|tokenize|keep('image', 'crops_local', 'text')"),
      vocab_size=64,                       # BPE on the captions.
      text_len=16,
  )
  c.model = dict(
      name="siglip2",
      image=tower(patch_size=4, pool="map", posemb="learn", posemb_grid=8),  # 8x8 patches.
      text=tower(vocab_size=None, max_len=16, pool="last", num_classes=64),
      temperature_init=10.0,
      bias_init=-10.0,
      distill=dict(out_dim=256, hidden_dim=128, bottleneck_dim=32),
  )
  terms = dict(sig=dict(name="siglip"))
  if arg.distill:
    terms["sd"] = dict(name="self_distill", start_fraction=0.8)
  c.objective = dict(name="composite", terms=terms)
  c.optimizer = dict(lr=1e-3, warmup_steps=200, weight_decay=1e-4, schedule="cosine")
  c.evals = dict(
      zeroshot_colors=dict(name="zeroshot", data=dict(
          name="shapes", split="test", task="color", pp="value_range(-1, 1)")),
      dense_shapes=dict(name="dense_probe", data=dict(
          name="shapes", split="test", patch_labels=4, patch_label="shape",
          pp="value_range(-1, 1)"), train_examples=300, test_examples=200),
  )
  return c
