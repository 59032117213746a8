"""Writes a PNG grid of MAE / SimMIM reconstructions from a training workdir.

    python tools/visualize_reconstruction.py --workdir workdirs/mae_digits --out recon.png

Rows, one column per image: the original; the masked input (masked patches grey); the
reconstruction (the model's prediction on the masked patches, the visible patches as they
were). With MAE's per-patch normalised targets the prediction is shown de-normalised with
each original patch's mean and variance, as the MAE paper's figures do. Images come from
`--source/--split` through the run's train pp in evaluation mode (no random augmentation),
or through `--pp`.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def reconstruct(model, objective, params, images, rng):
  """(masked, reconstruction), both (b, h, w, c) like `images`, and the (b, n) bool mask."""
  import jax
  import jax.numpy as jnp

  from bigvl.models.masked_image import patchify, unpatchify
  from bigvl.objectives import masked_image
  from bigvl.objectives.masking import random_keep

  if not isinstance(objective, (masked_image.MAE, masked_image.SimMIM)):
    raise ValueError(f"The run's objective is {type(objective).__name__}; reconstructions "
                     "need mae or simmim.")
  p = model.patch_size()
  gh, gw = images.shape[1] // p, images.shape[2] // p
  images = jnp.asarray(images, jnp.float32)[:, :gh * p, :gw * p]

  @jax.jit
  def run(params, images, rng):
    keep, mask = random_keep(rng, images.shape[0], gh * gw, objective.mask_ratio)
    if isinstance(objective, masked_image.MAE):
      pred = model.apply({"params": params}, images, keep)
    else:
      pred = model.apply({"params": params}, images, mask)
    target = patchify(images, p)
    if getattr(objective, "norm_pix_loss", False):
      mean, var = target.mean(-1, keepdims=True), target.var(-1, keepdims=True)
      pred = pred * jnp.sqrt(var + 1e-6) + mean
    m = mask[..., None]
    return (unpatchify(jnp.where(m, jnp.nan, target), p, gh, gw),
            unpatchify(jnp.where(m, pred, target), p, gh, gw), mask)

  return tuple(np.asarray(x) for x in jax.device_get(run(params, images, rng)))


def grid_png(rows, path: str, vmin: float, vmax: float, scale: int = 4, gap: int = 2):
  """Writes rows (each (n, h, w, c) float, NaN = masked grey) as one PNG; returns its array."""
  from PIL import Image
  n, h, w, c = rows[0].shape
  H, W = h * scale, w * scale
  out = np.full((len(rows) * (H + gap) - gap, n * (W + gap) - gap, 3), 255, np.uint8)
  for r, row in enumerate(rows):
    for i, img in enumerate(row):
      x = (np.asarray(img, np.float64) - vmin) / (vmax - vmin)
      x = np.where(np.isnan(x), 0.5, np.clip(x, 0, 1))
      x = np.round(x * 255).astype(np.uint8)
      x = np.repeat(x, 3, axis=-1) if c == 1 else x[..., :3]
      x = x.repeat(scale, 0).repeat(scale, 1)
      out[r * (H + gap):r * (H + gap) + H, i * (W + gap):i * (W + gap) + W] = x
  Image.fromarray(out).save(path)
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="A workdir of an mae or simmim run.")
  ap.add_argument("--checkpoint", type=int, default=None, help="Step; default the newest.")
  ap.add_argument("--out", default=None, help="PNG path; default WORKDIR/reconstruction.png.")
  ap.add_argument("--num", type=int, default=8, help="Images (columns).")
  ap.add_argument("--source", default=None, help="Data source; default the run's train source.")
  ap.add_argument("--split", default="test")
  ap.add_argument("--pp", default=None, help="Preprocessing; default the run's train pp.")
  ap.add_argument("--value_range", default="-1,1", help="Pixel range of the pp's output.")
  ap.add_argument("--scale", type=int, default=4, help="Pixels per image pixel in the PNG.")
  ap.add_argument("--seed", type=int, default=0, help="Seed of the random masks.")
  args = ap.parse_args(argv)

  import jax

  from bigvl import config_lib, eval as eval_lib
  from bigvl.data import sources, transforms

  try:
    config = config_lib.with_defaults(eval_lib.load_run_config(args.workdir))
    config.evals = {}
    b, step, state = eval_lib.restore(config, args.workdir, args.checkpoint)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  train_cfg = config.data.train.to_dict()
  opts = {k: v for k, v in train_cfg.items() if k not in ("pp", "split", "weight")}
  if args.source:
    opts = {"source": args.source}
  source = sources.build(dict(opts, split=args.split))
  pp = transforms.build(args.pp or train_cfg["pp"], **b["context"])
  images = np.stack([pp(source[i])["image"] for i in range(min(args.num, len(source)))])
  vmin, vmax = (float(v) for v in args.value_range.split(","))
  try:
    masked, recon, _ = reconstruct(b["model"], b["objective"], state.params, images,
                                   jax.random.PRNGKey(args.seed))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  out = args.out or os.path.join(args.workdir, "reconstruction.png")
  grid_png([images[:, :recon.shape[1], :recon.shape[2]], masked, recon], out, vmin, vmax,
           args.scale)
  print(f"Wrote {out}: {len(images)} images of step {step}; rows original / masked "
        f"({b['objective'].mask_ratio:.0%} of patches) / reconstruction.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
