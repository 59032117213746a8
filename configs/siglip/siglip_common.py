"""What every SigLIP config shares: the model of a variant, the sigmoid loss chunked across
devices, the paper's optimizer, WebLI-style image-text data and the ImageNet/COCO evals.

The setting files beside this one (b16.py, l16.py, so400m14.py) fix a variant and document the
number it reproduces; fork one of them, or call `get_config` here with another variant.

Arg language of every setting file (all optional, comma-separated):
  res=224             image size (multiple of the patch size)
  batch=32768         global batch (the paper's 32k)
  samples=40e9        examples seen; total_steps = samples / batch
  data=shards         shards (bigvl shards of image-text pairs; tools/make_dataset.py from
                      img2dataset output) | tfds
  data_dir=...        the shards' --out (required with data=shards), or TFDS's data_dir
  tfds=...            TFDS dataset name with data=tfds (its `texts` come from text_key)
  tokenizer=...       the sentencepiece model (32k vocabulary, e.g. big_vision's c4_en);
                      "" trains one on the train captions
  eval_dir=...        TFDS data_dir of the evals (imagenet2012, coco_captions); "" no evals
  smoke               tiny towers, 3 steps of batch 8 on synthetic data (tests, CPU)
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
from bigvl.evaluators import presets as eval_presets
from bigvl.models import presets
import ml_collections

TEXT_LEN = 64          # The released checkpoints' text length (the paper's ablations: 16).
VOCAB = 32_000         # big_vision's English sentencepiece (c4_en).


def pp_train(res: int) -> str:
  """The whole image resized to res x res (no crop, no flip), as big_vision trains SigLIP."""
  return recipes.pp_resized_caption(res)


def pp_eval(res: int) -> str:
  return recipes.pp_resized(res)


def arg_defaults(**overrides) -> dict:
  out = dict(res=224, batch=32_768, samples=40e9, data="shards", data_dir="", tfds="",
             tokenizer="", eval_dir="", smoke=False)
  out.update(overrides)
  return out


def get_config(variant: str, arg=None, **defaults) -> ml_collections.ConfigDict:
  """SigLIP `variant` ("B/16", "L/16", "So400m/14") with the setting file's arg defaults."""
  arg = parse_arg(arg, **arg_defaults(**defaults))
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = arg.batch
  c.total_steps = max(int(arg.samples) // arg.batch, 1)
  c.log_every = 100
  c.eval_every = 10_000
  c.checkpoint_every = 2_000
  c.keep_every = 50_000

  c.data = recipes.image_text_data(arg, pp=pp_train(arg.res), image_size=arg.res,
                                   vocab_size=VOCAB, text_len=TEXT_LEN,
                                   corpus="WebLI")
  c.model = presets.siglip(variant)
  c.model.update(dtype="bfloat16")
  for tower in ("image", "text"):
    c.model[tower].update(remat="full", scan_layers=True, attention_impl="auto")
  # The sigmoid loss as a ring over devices: no device holds the 32k x 32k logits, only its
  # (per-device batch)^2 block per ring step, so the dense XLA loss is the right kernel here.
  c.objective = dict(name="siglip", loss_impl="xla", chunked=True)
  # Paper: Adam(W) lr 1e-3, wd 1e-4, b2 0.95 (stabilises large batches), cosine, 5k? warmup.
  c.optimizer = dict(lr=1e-3, weight_decay=1e-4, b2=0.95, warmup_steps=5_000,
                     schedule="cosine", grad_clip=1.0)
  # The state sharded over every device (FSDP): the batch still splits over all of them.
  c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")

  c.evals = eval_presets.image_text_evals(pp_eval(arg.res), arg.eval_dir)
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    smoke(c)
  return c


def smoke(c) -> None:
  """Tiny towers of the same structure at 32px, on the stand-in data: 3 CPU steps."""
  recipes.smoke(c)
  c.model.image.update(variant="mu/8", remat="none", attention_impl="xla")
  c.model.text.update(width=32, depth=1, mlp_dim=64, num_heads=2, num_classes=32,
                      vocab_size=64, max_len=16, remat="none", attention_impl="xla")
  c.model.dtype = "float32"
  c.data.text_len = 16
  c.data.stand_in.image_size = 32
  c.data.train.image_size = 32
