"""What the paper configs under configs/<family>/ share: their data choices and `smoke` mode.

    c.data.train = recipes.source(arg, tfds="imagenet2012", split="train", pp=pp)
    c.data.stand_in = recipes.stand_in(image_size=224, num_classes=1000)
    if arg.smoke:
      recipes.smoke(c)          # 3 CPU steps on the stand-in; the config shrinks its model

A paper config reads its data one of two ways, chosen by its arg `data=`: `tfds` (a TFDS
dataset prepared in ArrayRecord format under `data_dir`, or TFDS's default directory) or
`shards` (bigvl shards made by tools/make_dataset.py, e.g. from img2dataset output;
`data_dir` required once data is read: the planner and smoke runs need none). `stand_in` is a synthetic source of the same fields, so the planner
(`python -m bigvl.plan`) and the smoke runs need no dataset.
"""

from __future__ import annotations

from bigvl.config_lib import ConfigError

DATA_KINDS = ("tfds", "shards")
# The value of a config field whose config arg the user must give before training (a path to
# other weights or a tokenizer): the run builds and plans without it, and `bigvl.train`
# refuses it in one line (`missing_args`) before touching the workdir.
MISSING = "MISSING-give-the-config-arg-"
SMOKE_STEPS = 3
SMOKE_BATCH = 8


def source(arg, *, tfds: str, split: str, pp: str | None = None, **tfds_options) -> dict:
  """One source block (training or eval) for `arg.data` and `arg.data_dir`."""
  kind, data_dir = arg.data, arg.data_dir
  if kind not in DATA_KINDS:
    raise ConfigError(f"Config arg data={kind!r}; valid: {', '.join(DATA_KINDS)}.")
  if kind == "shards":
    # An empty data_dir is refused when the run opens the source (ShardSource), not here:
    # the planner and a smoke run read the stand-in and need no dataset.
    out = dict(name="shards", data_dir=data_dir, split=split)
  else:
    out = dict(name="tfds", dataset=tfds, split=split, **tfds_options)
    if data_dir:
      out["data_dir"] = data_dir
  if pp is not None:
    out["pp"] = pp
  return out


def pp_resized(res: int) -> str:
  """Encoded image -> the whole image resized to res x res, in [-1, 1] (no crop, no flip)."""
  return f"decode|resize({res})|value_range(-1, 1)"


def pp_resized_caption(res: int) -> str:
  """`pp_resized`, plus one of the record's captions tokenized: an image-text train batch."""
  return pp_resized(res) + "|choose_text|tokenize|keep('image', 'text')"


def image_text_data(arg, *, pp: str, image_size: int, vocab_size: int, text_len: int,
                    corpus: str, tokenizer: str | None = None, workers: int = 8,
                    **tfds_options) -> dict:
  """`config.data` of an image-text pretraining run: the train source of `arg.data` (shards
  by default; data=tfds needs `arg.tfds`, a TFDS dataset with images and captions), its
  stand-in, the tokenizer (`arg.tokenizer` unless given) and the text settings. `corpus`
  names the paper's data in the error (e.g. "WebLI")."""
  if arg.data == "tfds" and not arg.tfds:
    raise ConfigError(f"Config arg data=tfds needs tfds=<a TFDS dataset with images and "
                      f"captions> (and its text_key); {corpus} is not in TFDS: use "
                      "data=shards,data_dir=<tools/make_dataset.py output>.")
  return dict(
      train=source(arg, tfds=arg.tfds, split="train", pp=pp, **tfds_options),
      stand_in=stand_in(image_size=image_size),
      tokenizer=arg.tokenizer if tokenizer is None else tokenizer,
      vocab_size=vocab_size,
      text_len=text_len,
      workers=workers,
  )


def stand_in(*, image_size: int, num_classes: int = 1000, size: int = 256) -> dict:
  """A synthetic source with the fields of an image-label or image-text dataset."""
  return dict(name="synthetic", split="train", size=size, image_size=image_size,
              num_classes=num_classes)


def smoke(c, *, keep_evals: bool = False) -> None:
  """Shrinks the run of config `c` (in place) to SMOKE_STEPS steps of batch SMOKE_BATCH on
  its stand-in data, with a tokenizer trained on the stand-in's captions, one device's mesh
  rules and no checkpoints but the last; evals are dropped unless `keep_evals`. The model is
  the config's to shrink (tiny widths): call this after building it."""
  if not c.data.get("stand_in"):
    raise ConfigError("smoke: the config sets no data.stand_in.")
  pp = c.data.train.get("pp")
  c.data.train = dict(c.data.stand_in.to_dict(), pp=pp)
  c.data.tokenizer = ""
  c.data.vocab_size = 64
  c.total_steps = SMOKE_STEPS
  c.batch_size = SMOKE_BATCH
  c.grad_accum_steps = 1
  c.data.workers = 0  # 3 steps: worker processes would cost more to start than they save.
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint_every = 0
  c.sharding.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding.rules = "dp"
  if c.optimizer.get("warmup_steps", 0):
    c.optimizer.warmup_steps = 1
  if not keep_evals:
    c.evals = {}


def required(arg_name: str, what: str) -> str:
  """The placeholder of a required config arg: `required("init", "MAE pretraining workdir")`
  -> "MISSING-give-the-config-arg-init=<MAE pretraining workdir>"."""
  return f"{MISSING}{arg_name}=<{what}>"


def missing_args(config) -> list[str]:
  """"config.init_from: give the config arg init=<...>" for every field still holding a
  `required` placeholder (nested dicts, lists and tuples included)."""
  out = []

  def walk(node, path):
    if hasattr(node, "items"):
      for k, v in node.items():
        walk(v, f"{path}.{k}")
    elif isinstance(node, (list, tuple)):
      for i, v in enumerate(node):
        walk(v, f"{path}[{i}]")
    elif isinstance(node, str) and MISSING in node:
      out.append(f"{path}: give the config arg {node[node.index(MISSING) + len(MISSING):]}")

  walk(config, "config")
  return out
