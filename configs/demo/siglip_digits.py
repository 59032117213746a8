"""SigLIP on the built-in digits image-text set: a tiny two-tower model that trains on a laptop CPU.

    python -m bigvl.train --config configs/demo/siglip_digits.py --workdir workdirs/siglip_digits

Evaluates zero-shot top-1 on the held-out digits (`eval/zeroshot_digits/top1`; README.md
has what it reaches and how long it takes). Arg: `steps=N,batch=N` (e.g.
`siglip_digits.py:steps=200`).
"""

from bigvl.config_lib import parse_arg
import ml_collections


def tiny_tower(**kw):
  # attention_impl: xla | cudnn (GPU) | pallas (flash attention; interpreted on CPU; splash on
  # TPU) | auto (cuDNN or Pallas on GPU, splash on TPU, xla on CPU).
  # remat: none | full | dots_saveable (what each block keeps for the backward pass).
  # scan_layers: one nn.scan over the blocks (compile time flat in depth; FSDP gathers per layer).
  return dict(width=64, depth=2, mlp_dim=256, num_heads=4, attention_impl="xla", remat="none",
              scan_layers=False, **kw)


def get_config(arg=None):
  arg = parse_arg(arg, steps=1500, batch=64)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps                # Optimizer steps.
  c.batch_size = arg.batch                 # Global batch.
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 500

  c.data = dict(
      train=dict(name="digits", split="train",
                 # Upsample the 8x8 scans 2x, shift by up to 2 pixels, one random caption.
                 pp="resize(16)|random_crop(16, pad=2)|value_range(-1, 1)|choose_text|"
                    "tokenize|keep('image', 'text')"),
      vocab_size=96,                       # Sentencepiece BPE trained on the train captions.
      text_len=16,
  )

  c.model = dict(
      name="two_towers",
      image=tiny_tower(patch_size=4, pool="map", posemb="learn"),
      text=tiny_tower(vocab_size=None, max_len=16, pool="last"),  # vocab_size: the tokenizer's.
      embed_dim=64,
      temperature_init=10.0,               # SigLIP's t' = log 10.
      bias_init=-10.0,                     # SigLIP's b.
      dtype="float32",                     # Compute dtype (bfloat16: mixed precision; params stay float32).
  )
  c.objective = dict(
      name="siglip",
      loss_impl="xla",                     # xla | pallas (blockwise, no B x B logits).
      chunked=False,                       # Ring over devices: no device holds B x B logits.
  )

  c.optimizer = dict(lr=1e-3, warmup_steps=100, weight_decay=1e-4, schedule="cosine")

  c.evals = dict(
      zeroshot_digits=dict(name="zeroshot", data=dict(name="digits", split="test",
                                                      pp="resize(16)|value_range(-1, 1)")),
  )
  return c
