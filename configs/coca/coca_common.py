"""What every CoCa config shares: the model of a size (Yu et al. 2022, Table 1), the
contrastive + captioning loss, the paper's optimizer settings, image-text shards and the
ImageNet zero-shot / COCO retrieval / COCO captioning evals.

The setting file beside this one (base.py) fixes a size and documents what it reproduces;
fork it, or call `get_config` here with another size.

Arg language of every setting file (all optional, comma-separated):
  res=288             image size (a multiple of the patch size, 18: 288 -> 16x16 = 256 tokens)
  batch=65536         global batch (the paper's 65,536)
  steps=500000        total steps (the paper's 500k)
  data=shards         shards (bigvl shards of image-text pairs; tools/make_dataset.py from
                      img2dataset output) | tfds
  data_dir=...        the shards' --out (required with data=shards), or TFDS's data_dir
  tfds=...            TFDS dataset name with data=tfds (its captions are the `texts`)
  tokenizer=...       a sentencepiece model of VOCAB pieces; "" trains one on the captions
  eval_dir=...        TFDS data_dir of the evals (imagenet2012, coco_captions); "" no evals
  smoke               tiny towers, 3 steps of batch 8 on synthetic data (tests, CPU)
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
from bigvl.evaluators import presets as eval_presets
import ml_collections

# Paper §4.1: "a sentence-piece model with a vocabulary size of 64k" trained on its data.
VOCAB = 64_000
# Not from the paper (it gives no text length): the length bigvl's SigLIP configs use.
TEXT_LEN = 64
PATCH = 18             # Paper §4.1: 288x288 images in 18x18 patches (256 image tokens).

# Table 1 of the paper: (width, image layers, unimodal decoder layers, multimodal decoder
# layers, MLP, heads). Only Base has a setting file (and was checked) so far.
SIZES = {
    "Base": (768, 12, 12, 12, 3072, 12),
}


def model(size: str, *, res: int) -> dict:
  """The `coca` model dict of Table 1's `size` at image size `res`."""
  if size not in SIZES:
    raise recipes.ConfigError(f"CoCa size {size!r}; valid: {', '.join(SIZES)}.")
  width, img_layers, uni, multi, mlp, heads = SIZES[size]
  tower = dict(width=width, mlp_dim=mlp, num_heads=heads)
  return dict(
      name="coca",
      # All 256 tokens go to the decoder and to the attentional pooler (pool is none).
      image=dict(tower, depth=img_layers, patch_size=PATCH, posemb="learn"),
      # One decoder: `unimodal_depth` text-only causal layers (their CLS output is the
      # contrastive text embedding), then `depth - unimodal_depth` cross-attending layers.
      decoder=dict(tower, depth=uni + multi, unimodal_depth=uni, vocab_size=VOCAB,
                   max_len=TEXT_LEN),
      embed_dim=width,     # Not stated in the paper: the contrastive embedding at the width.
      temperature_init=1 / 0.07,
      dtype="bfloat16",
  )


def pp_train(res: int) -> str:
  """The whole image resized to res x res (the paper names no augmentation)."""
  return recipes.pp_resized_caption(res)


def pp_eval(res: int) -> str:
  return recipes.pp_resized(res)


def arg_defaults(**overrides) -> dict:
  out = dict(res=288, batch=65_536, steps=500_000, data="shards", data_dir="", tfds="",
             tokenizer="", eval_dir="", smoke=False)
  out.update(overrides)
  return out


def get_config(size: str, arg=None, **defaults) -> ml_collections.ConfigDict:
  """CoCa `size` ("Base") with the setting file's arg defaults."""
  arg = parse_arg(arg, **arg_defaults(**defaults))
  if arg.res % PATCH:
    raise recipes.ConfigError(f"CoCa res={arg.res} is not a multiple of the patch size {PATCH}.")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = arg.batch
  c.total_steps = arg.steps
  c.log_every = 100
  c.eval_every = 10_000
  c.checkpoint_every = 2_000
  c.keep_every = 50_000

  c.data = recipes.image_text_data(arg, pp=pp_train(arg.res), image_size=arg.res,
                                   vocab_size=VOCAB, text_len=TEXT_LEN,
                                   corpus="JFT-3B + ALIGN")
  c.model = model(size, res=arg.res)
  # Both towers recompute their activations in the backward pass; the image tower is scanned
  # (bigvl's TextDecoder has no scan option).
  c.model.image.update(remat="full", scan_layers=True, attention_impl="auto")
  c.model.decoder.update(remat="full", attention_impl="auto")
  # Paper §4.1: loss = 1 x contrastive + 2 x captioning.
  c.objective = dict(name="coca", contrastive_weight=1.0, caption_weight=2.0,
                     contrastive="softmax")
  # Paper §4.1: Adafactor (b1 0.9, b2 0.999), decoupled weight decay 0.01, lr warmed up to
  # 8e-4 over the first 2% of steps, then decayed linearly. bigvl's `adafactor` is optax's
  # (no momentum), so AdamW with the same betas stands in (see the setting file's header).
  c.optimizer = dict(name="adamw", lr=8e-4, b1=0.9, b2=0.999, weight_decay=0.01,
                     warmup_steps=max(int(0.02 * arg.steps), 1), schedule="linear",
                     min_lr_ratio=0.0, grad_clip=1.0)
  c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")

  c.evals = {}
  if arg.eval_dir:
    coco = eval_presets.coco_retrieval(pp_eval(arg.res), data_dir=arg.eval_dir)
    c.evals = dict(
        imagenet=eval_presets.imagenet_zeroshot(pp_eval(arg.res), data_dir=arg.eval_dir),
        coco=coco,
        # Greedy captions of the same 5,000 Karpathy test images against their 5 captions
        # (zero-shot: the paper reports COCO captioning after fine-tuning).
        coco_captions=dict(name="captioning", data=dict(coco["data"]), decode="greedy"),
    )
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    smoke(c)
  return c


def smoke(c) -> None:
  """Tiny towers of the same structure at 32px, on the stand-in data: 3 CPU steps."""
  recipes.smoke(c)
  tiny = dict(width=32, mlp_dim=64, num_heads=2, remat="none", attention_impl="xla")
  c.model.image.update(tiny, depth=1, patch_size=8, scan_layers=False)
  c.model.decoder.update(width=32, mlp_dim=64, num_heads=2, attention_impl="xla", depth=2,
                         unimodal_depth=1, vocab_size=64, max_len=16, remat="none")
  c.model.embed_dim = 32
  c.model.dtype = "float32"
  c.data.text_len = 16
  c.data.stand_in.image_size = 32
  c.data.train.image_size = 32
