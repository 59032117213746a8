"""FLIP ViT-L/16 on LAION-400M (Li, Fan, Hu, Feichtenhofer, He 2023, "Scaling Language-Image
Pre-training via Masking"): CLIP training whose image tower encodes a random 50% of each
image's patches, then a short unmasked tuning phase (`phase=tune`).

Reproduces: ImageNet-1k zero-shot top-1 74.3% for ViT-L/16 on LAION-400M, 12.8B examples
sampled (the results table of the official code's README, facebookresearch/flip).
Everything below is that code's setting for it (configs/cfg_flip_large.py on
configs/default.py, models_flip.py): masking 0.5; batch 65,536; AdamW with b1 0.9, b2 0.95,
weight decay 0.2 (not on biases, norms, class token or position embeddings); lr 4e-6 per 256
examples (1.024e-3 at 65,536), cosine after a linear warmup; 10,000 "virtual ImageNet epochs"
of 1,281,167 examples (~32 epochs of LAION-400M) of which 40 warm up. The code runs
1,281,167 // batch steps per virtual epoch: 19 x 10,000 = 190,000 steps (12.45B examples) and
760 warmup steps at 65,536; this config counts steps the same way. Hardware: TPU v3-256 for
ViT-B/L (README). The paper's Figure 1 benchmarks on 256 TPU-v3 cores.
Unmasked tuning (README, "Unmasked tuning"): the same config from the pretrained weights with
mask ratio 0, lr 4e-8 per 256, 100 virtual epochs with 20 of warmup (1,900 and 380 steps at
65,536; the README suggests remat and a smaller batch if memory runs out).

    python -m bigvl.train --config configs/flip/l16.py:data_dir=gs://bucket/l400m \
        --workdir gs://bucket/flip_l16 --distributed
    python -m bigvl.train --distributed --workdir gs://bucket/flip_l16_tuned \
        --config configs/flip/l16.py:phase=tune,init=gs://bucket/flip_l16,data_dir=gs://bucket/l400m
    python -m bigvl.plan --config configs/flip/l16.py --topology v4-256

Data: bigvl shards of LAION-400M image-text pairs (tools/make_dataset.py from img2dataset
output; `data_dir=` required); for the evals TFDS imagenet2012 and coco_captions under
`eval_dir=`.

Model (models_flip.py): image ViT-L/16 with fixed 2-D sin-cos position embeddings, no
pre-LayerNorm, the mean of the encoded tokens (class token included) as its representation;
text a bidirectional transformer 768 wide, 12 layers, 12 heads, over 32 tokens of a
30,523-piece vocabulary (BERT's WordPiece + 1), pooled at its first position; both projected
to 768 without bias; tanh-GELU (flax's default), LayerNorm eps 1e-6; learned logit scale from
1/0.07. The code's text tower attends to padding too (it does not use its `txt_is_valid`), as
bigvl's does here.

Arg language (all optional, comma-separated):
  phase=pretrain      pretrain (masked) | tune (unmasked, from init=)
  init=...            with phase=tune: the pretraining workdir (required); its tokenizer.model
                      is used unless tokenizer= is given
  batch=65536         global batch; the lr follows at 4e-6 (pretrain) / 4e-8 (tune) per 256
  epochs=0            virtual ImageNet epochs; 0: the phase's (10,000 / 100)
  mask=0.5            the pretraining mask ratio (the paper's ablations: 0.5, 0.75)
  data=shards|tfds, data_dir=..., tfds=..., tokenizer=... (a sentencepiece model; "" trains one
  of 30,523 pieces on the captions), eval_dir=..., smoke

Deviations from the paper's code:
  - No class token: the code prepends one and averages it with the patch tokens; bigvl's
    mean-pooled ViT has none (1,024 fewer parameters).
  - Tokenizer: sentencepiece instead of BERT's WordPiece (same 30,523-row embedding).
  - The logit scale is not clamped at 100 (the code clips it).
  - Eval preprocessing: bigvl's resize-shorter-side + centre crop, not checked against the
    code's ImageNet pipeline. Precision: bfloat16 compute.
"""

import os

from bigvl import recipes
from bigvl.config_lib import parse_arg
from bigvl.evaluators import presets as eval_presets
import ml_collections

RES = 224
TEXT_LEN = 32            # aug.txt.max_len
VOCAB = 30_523           # BERT's 30,522 WordPiece + 1 (model_txt.vocab_size)
EMBED = 768              # clr.proj_dim_out
VIRTUAL_EPOCH = 1_281_167  # samples_per_epoch: an ImageNet-sized "virtual" epoch
PHASES = dict(
    pretrain=dict(base_lr=4e-6, epochs=10_000, warmup_epochs=40),
    tune=dict(base_lr=4e-8, epochs=100, warmup_epochs=20),
)
# The code's weight decay skips biases, norm scales, the class token and position embeddings.
WD_PATTERN = r".*/kernel$|.*/token_embedding/embedding$"


def pp_train() -> str:
  """Random resized crop (area 0.5-1, aspect 3/4-4/3), random flip, ImageNet mean/std."""
  return (f"inception_crop({RES}, scale=(0.5, 1.0))|flip_lr|normalize('imagenet')|"
          "choose_text|tokenize|keep('image', 'text')")


def pp_eval() -> str:
  return f"resize_small({RES})|central_crop({RES})|normalize('imagenet')"


def model() -> dict:
  return dict(
      name="two_towers",
      image=dict(variant="L/16", posemb="sincos2d", pool="gap", patch_bias=True,
                 act="gelu_tanh", ln_eps=1e-6),
      text=dict(variant="B", vocab_size=VOCAB, max_len=TEXT_LEN, causal=False, pool="first",
                act="gelu_tanh", ln_eps=1e-6),
      embed_dim=EMBED,
      image_proj_bias=False,
      text_proj_bias=False,
      temperature_init=1 / 0.07,
      bias_init=None,
  )


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, phase="pretrain", init="", batch=65_536, epochs=0, mask=0.5,
                  data="shards", data_dir="", tfds="", tokenizer="", eval_dir="", smoke=False)
  if arg.phase not in PHASES:
    raise recipes.ConfigError(f"Config arg phase={arg.phase!r}; valid: {', '.join(PHASES)}.")
  phase = PHASES[arg.phase]
  tune = arg.phase == "tune"
  if tune and not arg.init and not arg.smoke:
    raise recipes.ConfigError("FLIP phase=tune needs init=<the pretraining workdir>.")
  steps_per_epoch = max(VIRTUAL_EPOCH // arg.batch, 1)
  epochs = arg.epochs or phase["epochs"]

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = arg.batch
  c.total_steps = epochs * steps_per_epoch
  c.log_every = 100
  c.eval_every = 10_000 if not tune else c.total_steps
  c.checkpoint_every = 2_000 if not tune else 500
  c.keep_every = 50_000

  tokenizer = arg.tokenizer
  if tune and not tokenizer and arg.init:
    tokenizer = os.path.join(arg.init, "tokenizer.model")  # The pretraining's token ids.
  c.data = recipes.image_text_data(arg, pp=pp_train(), image_size=RES, vocab_size=VOCAB,
                                   text_len=TEXT_LEN, corpus="LAION-400M", tokenizer=tokenizer)
  c.model = model()
  c.model.update(dtype="bfloat16")
  for tower in ("image", "text"):
    c.model[tower].update(remat="full", scan_layers=True, attention_impl="auto")
  c.objective = dict(name="clip", loss_impl="xla", image_mask_ratio=0.0 if tune else arg.mask)
  c.optimizer = dict(name="adamw", lr=phase["base_lr"] * arg.batch / 256, schedule="cosine",
                     warmup_steps=phase["warmup_epochs"] * steps_per_epoch, b1=0.9, b2=0.95,
                     weight_decay=0.2, wd_pattern=WD_PATTERN, grad_clip=0.0)
  if tune:   # The unmasked tuning starts from the masked pretraining's weights.
    c.init_from = arg.init or recipes.required("init", "the phase=pretrain workdir")
  c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")

  c.evals = eval_presets.image_text_evals(pp_eval(), arg.eval_dir)
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    smoke(c)
  return c


def smoke(c) -> None:
  """Tiny towers of the same structure at 32px on the stand-in data (masking kept): 3 steps."""
  recipes.smoke(c)
  c.init_from = ""
  c.model.image.update(variant="mu/8", remat="none", attention_impl="xla")
  c.model.text.update(variant="mu", vocab_size=64, max_len=16, remat="none",
                      attention_impl="xla")
  c.model.embed_dim = 32
  c.model.dtype = "float32"
  c.data.text_len = 16
  c.data.tokenizer = ""
  c.data.stand_in.image_size = 32
  c.data.train.image_size = 32
  c.data.train.pp = c.data.train.pp.replace(f"inception_crop({RES},", "inception_crop(32,")
