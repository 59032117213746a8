"""Train a sentencepiece tokenizer on captions.

  # one text per line:
  python tools/train_tokenizer.py --out tok.model --vocab_size 32000 --text_file captions.txt
  # all captions of a split that tools/make_dataset.py wrote:
  python tools/train_tokenizer.py --out tok.model --vocab_size 32000 --dataset /data/cc3m
  # any registered source's texts(), with its options:
  python tools/train_tokenizer.py --out tok.model --vocab_size 64 --source digits \
      --source_arg split=train

Prints the vocabulary size, the number of texts and the fraction of texts longer than
--text_len tokens (with EOS). Use the model with `config.data.tokenizer = "tok.model"`.
Exit status: 0 done, 2 bad arguments or no texts.
"""

import argparse
import ast
import os
import sys

# Runs from a checkout without installing bigvl.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bigvl.data import sources  # noqa: E402
from bigvl.data import tokenizer  # noqa: E402


def _source_arg(text: str):
  key, eq, value = text.partition("=")
  if not eq or not key:
    raise argparse.ArgumentTypeError(f"--source_arg {text!r}: expected key=value")
  try:
    return key, ast.literal_eval(value)  # Numbers, lists, None...
  except (ValueError, SyntaxError):
    return key, value  # ...and anything else is a string.


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tools/train_tokenizer.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="where to write the .model file")
  p.add_argument("--vocab_size", type=int, required=True)
  p.add_argument("--model_type", choices=("bpe", "unigram"), default="bpe")
  p.add_argument("--text_len", type=int, default=16,
                 help="report the fraction of texts longer than this many tokens")
  inputs = p.add_mutually_exclusive_group(required=True)
  inputs.add_argument("--text_file", help="a UTF-8 file with one text per line")
  inputs.add_argument("--dataset", help="a bigvl shards directory (tools/make_dataset.py)")
  inputs.add_argument("--source", help="a registered source name, e.g. digits")
  p.add_argument("--split", default="train", help="split of --dataset (default: train)")
  p.add_argument("--source_arg", type=_source_arg, action="append", default=[],
                 help="option of --source as key=value; repeatable")
  return p


def _texts(args) -> list[str]:
  if args.text_file:
    if not os.path.isfile(args.text_file):
      raise FileNotFoundError(f"--text_file {args.text_file!r} not found.")
    with open(args.text_file, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  if args.dataset:
    cfg = {"name": "shards", "data_dir": args.dataset, "split": args.split}
  else:
    cfg = {"name": args.source, **dict(args.source_arg)}
  source = sources.build(cfg, where="the source of --source/--dataset")
  if not hasattr(source, "texts"):
    raise ValueError(f"Source {cfg['name']!r} has no texts(); train on a --text_file instead.")
  return list(source.texts())


def main(argv=None) -> int:
  """Runs the CLI on `argv` (without the program name); returns the exit status."""
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse has printed the usage and the problem.
    return 0 if e.code == 0 else 2
  try:
    texts = _texts(args)
    if not texts:
      raise ValueError("No texts to train on: the input has no captions.")
    report = tokenizer.train_to_file(texts, args.out, args.vocab_size, args.model_type,
                                     args.text_len)
  except (FileNotFoundError, ValueError, RuntimeError) as e:  # spm raises RuntimeError.
    print(f"train_tokenizer: error: {e}", file=sys.stderr)
    return 2
  print(f"Wrote {report['path']}: vocabulary size {report['vocab_size']}, "
        f"{report['num_texts']} texts, {report['truncated_fraction']:.1%} longer than "
        f"{args.text_len} tokens.")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
