"""MAE on the built-in digits scans: a tiny ViT learns from images alone, judged by a linear
probe and kNN on its frozen features.

    python -m bigvl.train --config configs/demo/mae_digits.py --workdir workdirs/mae_digits
    python tools/visualize_reconstruction.py --workdir workdirs/mae_digits --out recon.png

The probes (`eval/probe/linear`, `eval/knn/top1`) read the mean encoder token of each
unmasked image. Arg: `steps=N,batch=N,ratio=F` (e.g. `mae_digits.py:ratio=0.5`).
"""

from bigvl.config_lib import parse_arg
import ml_collections

PP_EVAL = "resize(16)|value_range(-1, 1)"


def get_config(arg=None):
  arg = parse_arg(arg, steps=1500, batch=128, ratio=0.75)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps
  c.batch_size = arg.batch
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 500

  c.data = dict(
      train=dict(name="digits", split="train",
                 pp="resize(16)|random_crop(16, pad=2)|value_range(-1, 1)|keep('image')"),
  )
  c.model = dict(
      name="mae",
      # 16x16 images in 4x4 patches: 16 tokens, of which the encoder sees 4 at ratio 0.75.
      encoder=dict(width=64, depth=4, mlp_dim=256, num_heads=4, patch_size=4, posemb="learn"),
      decoder_width=64, decoder_depth=2, decoder_mlp_dim=256, decoder_heads=4,
      channels=1,
  )
  c.objective = dict(name="mae", mask_ratio=arg.ratio, norm_pix_loss=True)
  c.optimizer = dict(lr=1.5e-3, warmup_steps=200, weight_decay=0.05, b2=0.95,
                     schedule="cosine")
  c.evals = dict(
      probe=dict(name="fewshot", data=dict(name="digits", split="test", pp=PP_EVAL),
                 shots=(10,), full=True),
      knn=dict(name="knn", data=dict(name="digits", split="test", pp=PP_EVAL), k=10),
      # Held-out masked-patch loss, and reconstructions in TensorBoard (IMAGES tab).
      recon=dict(name="reconstruction", data=dict(name="digits", split="test", pp=PP_EVAL),
                 num_images=8),
  )
  return c
