"""Convert checkpoints between HF transformers / open_clip and bigvl.

  # HF CLIPModel / SiglipModel / ViTModel / GPT2LMHeadModel directory (config.json + weights) -> bigvl:
  python tools/convert_checkpoint.py hf path/to/hf_dir converted/clip-b32
  # open_clip state dict, with the open_clip model name (or --open_clip_config file.json):
  python tools/convert_checkpoint.py open_clip open_clip_pytorch_model.bin converted/b32 \
      --model ViT-B-32
  # A bigvl training run (vit or two_towers) -> bigvl converted checkpoint:
  python tools/convert_checkpoint.py from_workdir workdirs/siglip_digits converted/siglip-digits
  # bigvl two-tower checkpoint -> HF directory that CLIPModel/SiglipModel.from_pretrained loads:
  python tools/convert_checkpoint.py to_hf converted/clip-b32 hf/clip-b32

The bigvl checkpoint is `<out>/params` (orbax), `<out>/config.json` (the bigvl model config)
and `<out>/meta.json`; load it with `bigvl.convert.load_converted(out)` (docs/convert.md).
`--model_config` converts into a given bigvl model config (JSON text or a .json file) instead
of the one derived from the source; a checkpoint that does not fit it is refused, naming the
first tensor that differs. Outputs are written to a temporary sibling and renamed when
complete; an existing output is never overwritten.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time


def _model_config(text: str | None):
  if text is None:
    return None
  if os.path.exists(text):
    with open(text) as f:
      return json.load(f)
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    try:
      return ast.literal_eval(text)  # A Python dict literal, as in configs.
    except (ValueError, SyntaxError) as e:
      raise SystemExit(f"--model_config is neither a file, JSON nor a Python dict literal: {e}")


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  sub = parser.add_subparsers(dest="command", required=True)
  hf = sub.add_parser("hf", help="HF transformers directory -> bigvl")
  hf.add_argument("hf_dir")
  hf.add_argument("out")
  hf.add_argument("--model_config", help="bigvl model config to convert into (JSON or file)")
  oc = sub.add_parser("open_clip", help="open_clip state dict -> bigvl")
  oc.add_argument("checkpoint")
  oc.add_argument("out")
  which = oc.add_mutually_exclusive_group(required=True)
  which.add_argument("--model", help="open_clip model name, e.g. ViT-B-32")
  which.add_argument("--open_clip_config", help="open_clip model config JSON file")
  oc.add_argument("--model_config", help="bigvl model config to convert into (JSON or file)")
  to = sub.add_parser("to_hf", help="bigvl two-tower checkpoint -> HF transformers directory")
  to.add_argument("bigvl_dir")
  to.add_argument("out")
  to.add_argument("--family", choices=("clip", "siglip"),
                  help="HF class to write; default: siglip for MAP-pooled images, else clip")
  wd = sub.add_parser("from_workdir", help="a bigvl training run (vit / two_towers) -> bigvl "
                                           "converted checkpoint (then to_hf)")
  wd.add_argument("workdir")
  wd.add_argument("out")
  wd.add_argument("--step", type=int, help="checkpoint step; default the newest")
  wd.add_argument("--image_size", type=int, help="default: from the learned position table")
  wd.add_argument("--image_mean", default="0.5", help="per channel, comma-separated; 0.5 is "
                  "value_range(-1, 1)")
  wd.add_argument("--image_std", default="0.5")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  # Importing here keeps --help instant; bigvl must be importable (installed, or run from
  # the repository root).
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from bigvl import convert

  start = time.time()
  progress = lambda msg: print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)
  try:
    if args.command == "hf":
      out = convert.from_hf(args.hf_dir, args.out, model_config=_model_config(args.model_config),
                            progress=progress)
    elif args.command == "open_clip":
      out = convert.from_open_clip(args.checkpoint, args.out, model_name=args.model,
                                   open_clip_config=args.open_clip_config,
                                   model_config=_model_config(args.model_config),
                                   progress=progress)
    elif args.command == "from_workdir":
      floats = lambda text: tuple(float(x) for x in text.split(","))
      out = convert.from_workdir(args.workdir, args.out, step=args.step,
                                 image_size=args.image_size, image_mean=floats(args.image_mean),
                                 image_std=floats(args.image_std), progress=progress)
    else:
      out = convert.to_hf(args.bigvl_dir, args.out, family=args.family, progress=progress)
  except (convert.ConversionError, FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  progress(f"done: {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
