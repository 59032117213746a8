"""CapPa on the built-in shapes captions: a tiny captioner that learns to describe
coloured shapes and where they are, on a laptop CPU.

    python -m bigvl.train --config configs/demo/cappa_shapes.py --workdir workdirs/cappa_shapes

CapPa (Tschannen et al., 2023, "Image Captioners Are Scalable Vision Learners Too"):
plain captioning where a fraction of the batches use parallel prediction (every decoder
input masked, no causal mask), which forces the decoder to read the image. Evaluates the
greedy captions of the 500 held-out test images (`eval/captions/exact_match`, BLEU-4,
CIDEr), and zero-shot colour classification of single shapes by scoring each colour's
prompts with the caption likelihood (`eval/scoring_colors/top1`). Arg:
`steps=N,batch=N,parallel=F`.
"""

from bigvl.config_lib import parse_arg
import ml_collections


def tower(**kw):
  return dict(width=64, depth=2, mlp_dim=256, num_heads=4, **kw)


def get_config(arg=None):
  arg = parse_arg(arg, steps=4000, batch=64, parallel=0.5)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps
  c.batch_size = arg.batch
  c.log_every = 100
  c.eval_every = 1000
  c.checkpoint_every = 1000

  c.data = dict(
      # No flip: a mirrored picture would contradict "left of" / "right of".
      train=dict(name="shapes", split="train",
                 pp="value_range(-1, 1)|choose_text|tokenize|keep('image', 'text')"),
      vocab_size=64,                       # BPE on the captions: the longest is 11 tokens.
      text_len=16,
  )
  c.model = dict(
      name="captioner",
      image=tower(patch_size=8, posemb="learn"),          # 32x32 -> 16 tokens.
      decoder=tower(vocab_size=None, max_len=16),         # vocab_size: the tokenizer's.
      dtype="float32",
  )
  c.objective = dict(name="cappa", parallel_fraction=arg.parallel)
  c.optimizer = dict(lr=1e-3, warmup_steps=200, weight_decay=1e-4, schedule="cosine")
  c.evals = dict(
      captions=dict(name="captioning", data=dict(name="shapes", split="test",
                                                 pp="value_range(-1, 1)"), decode="greedy"),
      # Zero-shot colour of single shapes, each class scored by the likelihood of its prompts.
      scoring_colors=dict(name="scoring_zeroshot", data=dict(
          name="shapes", split="test", task="color", pp="value_range(-1, 1)")),
  )
  return c
