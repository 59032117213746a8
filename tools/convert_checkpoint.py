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
  # big_vision .npz (SigLIP, LiT, ViT; it has no config: give the bigvl one, or a preset):
  python tools/convert_checkpoint.py big_vision webli_en_b16_224_63724782.npz converted/siglip-b16 \
      --model_config siglip:B/16
  # bigvl vit / two_towers checkpoint -> big_vision .npz (--scanned for scan=True models):
  python tools/convert_checkpoint.py to_big_vision converted/siglip-b16 siglip-b16.npz

The bigvl checkpoint is `<out>/params` (orbax), `<out>/config.json` (the bigvl model config)
and `<out>/meta.json`; load it with `bigvl.convert.load_converted(out)` (docs/convert.md).
`--model_config` converts into a given bigvl model config (JSON text, a .json file, or a preset
`NAME:VARIANT` of bigvl.models.presets such as siglip:B/16) instead of the one derived from
the source; a checkpoint that does not fit it is refused, naming the first tensor that differs.
Outputs are written to a temporary sibling and renamed when complete; an existing output is
never overwritten.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import time


def _model_config(text: str | None):
  if text is None:
    return None
  preset = re.fullmatch(r"([a-z_]+):(\S+)", text)
  if preset and not os.path.exists(text):
    from bigvl.models import presets
    make = getattr(presets, preset.group(1), None)
    if not callable(make) or preset.group(1).startswith("_"):
      raise SystemExit(f"--model_config {text}: bigvl.models.presets has no {preset.group(1)!r}; "
                       "presets: clip, siglip (e.g. siglip:B/16).")
    try:
      return make(preset.group(2))
    except ValueError as e:
      raise SystemExit(f"--model_config {text}: {e}")
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
  to.add_argument("--family", choices=("clip", "siglip", "siglip2"),
                  help="HF class to write (siglip2: Siglip2Model, NaFlex); default: siglip "
                       "for MAP-pooled images, else clip")
  bv = sub.add_parser("big_vision", help="big_vision .npz (SigLIP, LiT, ViT) -> bigvl")
  bv.add_argument("checkpoint", help="the .npz; FILE.npz:img converts the image tower of a "
                  "two-tower file (into a vit config)")
  bv.add_argument("out")
  bv.add_argument("--model_config", required=True,
                  help="bigvl model config of the checkpoint's shapes (JSON, file or preset "
                       "such as siglip:B/16): a big_vision .npz carries none")
  bv.add_argument("--image_size", type=int, help="default: from the learned position table")
  tb = sub.add_parser("to_big_vision", help="bigvl vit / text / two_towers checkpoint -> "
                                            "big_vision .npz")
  tb.add_argument("bigvl_dir")
  tb.add_argument("out", help="the .npz file to write")
  tb.add_argument("--scanned", action="store_true",
                  help="stack the encoder blocks (encoderblock/...), for big_vision scan=True")
  tb.add_argument("--no_prefix", action="store_true",
                  help="name the arrays img/... instead of params/img/...")
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
    elif args.command == "big_vision":
      out = convert.from_big_vision_npz(args.checkpoint, args.out,
                                        model_config=_model_config(args.model_config),
                                        image_size=args.image_size, progress=progress)
    elif args.command == "to_big_vision":
      out = convert.to_big_vision_npz(args.bigvl_dir, args.out, scanned=args.scanned,
                                      prefix=not args.no_prefix, progress=progress)
    else:
      out = convert.to_hf(args.bigvl_dir, args.out, family=args.family, progress=progress)
  except (convert.ConversionError, FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  progress(f"done: {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
