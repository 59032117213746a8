"""MAE on Fashion-MNIST (60,000 real 28x28 product photos, 10 classes): a laptop CPU demo.

    apt-get install dataset-fashion-mnist    # once: /usr/share/datasets/fashion-mnist
    python -m bigvl.train --config configs/demo/mae_fashion_mnist.py --workdir workdirs/mae_fm
    python -m bigvl.eval --config configs/demo/mae_fashion_mnist.py --workdir workdirs/mae_fm --random_init

A tiny ViT learns from the images alone (no labels); a linear probe (`eval/probe/linear`)
and kNN (`eval/knn/top1`) on the frozen encoder's mean token judge it, against the same
probes on the params it started from (`--random_init`). Both fit on the first
`probe_train` train images and score the first `probe_test` test images, so that an
evaluation takes seconds on a CPU rather than a pass over all 70,000 per evaluator.
Arg: `steps=N,batch=N,ratio=F,patch=N,probe_train=N,probe_test=N` (e.g. `:ratio=0.5`).
colabs/mae_mask_ratio.ipynb sweeps the masking ratio with it (docs/self_supervised.md).
"""

from bigvl.config_lib import parse_arg
import ml_collections

PP_EVAL = "value_range(-1, 1)"


def get_config(arg=None):
  arg = parse_arg(arg, steps=1500, batch=128, ratio=0.75, patch=7, probe_train=5000,
                  probe_test=2000)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps
  c.batch_size = arg.batch
  c.log_every = 100
  c.eval_every = 0                         # Only at the end.
  c.checkpoint_every = 1000

  c.data = dict(
      train=dict(name="fashion_mnist", split="train",
                 pp="flip_lr|random_crop(28, pad=2)|value_range(-1, 1)|keep('image')"),
  )
  c.model = dict(
      name="mae",
      # 28x28 images in 7x7 patches (patch=7): 16 tokens, of which the encoder sees 4 at
      # ratio 0.75.
      encoder=dict(width=64, depth=4, mlp_dim=256, num_heads=4, patch_size=arg.patch,
                   posemb="learn"),
      decoder_width=64, decoder_depth=2, decoder_mlp_dim=256, decoder_heads=4,
      channels=1,
  )
  c.objective = dict(name="mae", mask_ratio=arg.ratio, norm_pix_loss=True)
  c.optimizer = dict(lr=1.5e-3, warmup_steps=100, weight_decay=0.05, b2=0.95,
                     schedule="cosine")
  # Fit on the head of train, score the head of test.
  data = dict(name="fashion_mnist", split=f"test[:{arg.probe_test}]", pp=PP_EVAL)
  train_split = f"train[:{arg.probe_train}]"
  c.evals = dict(
      probe=dict(name="fewshot", data=data, train_split=train_split, shots=(), full=True),
      knn=dict(name="knn", data=data, train_split=train_split, k=10),
  )
  return c
