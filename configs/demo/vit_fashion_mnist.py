"""A supervised ViT on Fashion-MNIST's labels: a laptop CPU demo, and LiT's pretrained tower.

    apt-get install dataset-fashion-mnist    # once: /usr/share/datasets/fashion-mnist
    python -m bigvl.train --config configs/demo/vit_fashion_mnist.py --workdir workdirs/vit_fm

Trains the SigLIP Fashion-MNIST demo's image tower (configs/demo/siglip_fashion_mnist.py,
same options, so its params load into a two-tower's `img` by path) with a 10-way head by
softmax cross-entropy, and reports the head's top-1 on the 10,000 test images
(`eval/test/top1`). colabs/lit_locked_tower.ipynb locks this tower for LiT.
Arg: `steps=N,batch=N,split=S` (split: the train records, e.g. `train[10000:]`).
"""

from bigvl.config_lib import parse_arg
import ml_collections
import siglip_fashion_mnist  # The config's own directory is importable.


def get_config(arg=None):
  arg = parse_arg(arg, steps=1000, batch=128, split="train")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps
  c.batch_size = arg.batch
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 500

  c.data = dict(
      train=dict(name="fashion_mnist", split=arg.split,
                 pp="flip_lr|random_crop(28, pad=2)|value_range(-1, 1)|keep('image', 'label')"),
  )
  tower = siglip_fashion_mnist.get_config().model.image.to_dict()
  c.model = dict(name="vit", num_classes=10, **tower)
  c.objective = dict(name="classification", label_smoothing=0.0)
  c.optimizer = dict(lr=1e-3, warmup_steps=100, weight_decay=1e-4, schedule="cosine")
  c.evals = dict(
      test=dict(name="classify", data=dict(name="fashion_mnist", split="test",
                                           pp="value_range(-1, 1)")),
  )
  return c
