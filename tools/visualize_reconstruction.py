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


def grid_png(rows, path: str, vmin: float, vmax: float, scale: int = 4, gap: int = 2):
  """Writes rows (each (n, h, w, c) float, NaN = masked grey) as one PNG; returns its array."""
  from PIL import Image

  from bigvl.evaluators.reconstruction import image_grid
  out = image_grid(rows, vmin, vmax, scale, gap)
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
  from bigvl.evaluators.reconstruction import reconstruct

  try:
    config = config_lib.with_defaults(eval_lib.load_run_config(args.workdir))
    config.evals = {}
    run, step, state = eval_lib.restore(config, args.workdir, args.checkpoint)
  except (config_lib.ConfigError, eval_lib.DamagedCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  train_cfg = config.data.train.to_dict()
  opts = {k: v for k, v in train_cfg.items() if k not in ("pp", "split", "weight")}
  if args.source:
    opts = {"name": args.source}
  source = sources.build(dict(opts, split=args.split))
  pp = transforms.build(args.pp or train_cfg["pp"], **run.pp_context)
  images = np.stack([pp(source[i])["image"] for i in range(min(args.num, len(source)))])
  vmin, vmax = (float(v) for v in args.value_range.split(","))
  try:
    masked, recon, _ = reconstruct(run.model, run.objective, run.eval_params(state), images,
                                   jax.random.PRNGKey(args.seed))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  out = args.out or os.path.join(args.workdir, "reconstruction.png")
  grid_png([images[:, :recon.shape[1], :recon.shape[2]], masked, recon], out, vmin, vmax,
           args.scale)
  print(f"Wrote {out}: {len(images)} images of step {step}; rows original / masked "
        f"({run.objective.mask_ratio:.0%} of patches) / reconstruction.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
