"""SigLIP on Fashion-MNIST (60,000 real 28x28 product photos, 10 classes): a laptop CPU demo.

    apt-get install dataset-fashion-mnist    # once: /usr/share/datasets/fashion-mnist
    python -m bigvl.train --config configs/demo/siglip_fashion_mnist.py --workdir workdirs/siglip_fashion_mnist

Trains a tiny two-tower model on the images and templated captions ("a photo of the
sneaker.") and evaluates zero-shot top-1 over the 10 class names on the 10,000 test images
(`eval/zeroshot_fashion_mnist/top1`; docs/data.md has what it reaches and how long it
takes). Arg: `steps=N,batch=N` (e.g. `siglip_fashion_mnist.py:steps=500`).
"""

from bigvl.config_lib import parse_arg
import ml_collections


def tiny_tower(**kw):
  # The digits demo's towers (configs/demo/siglip_digits.py says what each option does).
  return dict(width=64, depth=2, mlp_dim=256, num_heads=4, attention_impl="xla", remat="none",
              scan_layers=False, **kw)


def get_config(arg=None):
  arg = parse_arg(arg, steps=2000, batch=64)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps                # Optimizer steps.
  c.batch_size = arg.batch                 # Global batch.
  c.log_every = 100
  c.eval_every = 1000
  c.checkpoint_every = 1000

  c.data = dict(
      train=dict(name="fashion_mnist", split="train",
                 # Clothes are left-right symmetric enough to mirror; shift by up to 2 pixels.
                 pp="flip_lr|random_crop(28, pad=2)|value_range(-1, 1)|choose_text|"
                    "tokenize|keep('image', 'text')"),
      vocab_size=96,                       # Sentencepiece BPE trained on the train captions.
      text_len=16,
  )

  c.model = dict(
      name="two_towers",
      image=tiny_tower(patch_size=7, pool="map", posemb="learn"),  # 28/7: 4x4 = 16 patches.
      text=tiny_tower(vocab_size=None, max_len=16, pool="last"),   # vocab_size: the tokenizer's.
      embed_dim=64,
      temperature_init=10.0,               # SigLIP's t' = log 10.
      bias_init=-10.0,                     # SigLIP's b.
      dtype="float32",
  )
  c.objective = dict(name="siglip", loss_impl="xla", chunked=False)

  c.optimizer = dict(lr=1e-3, warmup_steps=100, weight_decay=1e-4, schedule="cosine")

  c.evals = dict(
      zeroshot_fashion_mnist=dict(name="zeroshot", data=dict(
          name="fashion_mnist", split="test", pp="value_range(-1, 1)")),
  )
  return c
