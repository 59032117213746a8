"""LiT with a locked ViT-B/16 image tower and a B text tower trained from scratch (Zhai et al.
2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning").

The paper's "Lu" setting, the one it names LiT: the image tower is a pre-trained ViT-B/16
loaded from `init=` and never updated (optimizer.frozen_pattern "img/.*"); the text tower, a
B-sized bidirectional transformer (768 wide, 12 layers) pooled at its last position, then a
768-wide biased linear head (big_vision's text_transformer), starts from random
weights; no head on the image side (the pooled class token is the image embedding, as in the
released LiT-B16B_2); the softmax contrastive loss over the global batch with a learned
temperature starting at 10.

Reproduces: no published number is for exactly this setting. The nearest published ones are
the released LiT-B16B_2 (73.9% ImageNet-1k zero-shot) and LiT-B16B (72.1%), trained on
CC12M + YFCC100m with the same kind of image tower (an ImageNet-21k ViT-B/16) but a BERT-Base
text tower initialised from BERT ("LU"), 16 tokens (big_vision configs/proj/image_text/
README_lit.md; google-research/vision_transformer model_cards/lit.md). The paper's
design-choice study compares the two text-tower starts ("Lu" and "LU").
Hardware and schedule: LiT-B16B took 0.125 days on 64 TPUv4 chips (model card); B16B_2 ran
60,000 steps, B16B 30,000 (vision_transformer README changelog). The released models' batch
size is not given in those sources; batch 4,096, lr 1e-3 (cosine, warmup 3% of the steps, at
least 100), weight decay 0.01 and gradient clipping at 1.0 are big_vision's
configs/proj/image_text/lit_coco.py, the LiT authors' public config.

    python tools/convert_checkpoint.py hf path/to/google-vit-base-patch16-224-in21k \
        converted/vit_b16_in21k
    python -m bigvl.train --distributed --workdir gs://bucket/lit_b16 \
        --config configs/lit/lit_b16.py:init=converted/vit_b16_in21k,data_dir=gs://bucket/cc12m
    python -m bigvl.plan --config configs/lit/lit_b16.py --topology v4-128

Data: bigvl shards of image-text pairs (CC12M + YFCC100m in the paper; tools/make_dataset.py
from img2dataset output; `data_dir=` required), or `data=tfds,tfds=coco_captions` (big_vision's
demo); for the evals TFDS imagenet2012 and coco_captions under `eval_dir=`.

Arg language (all optional, comma-separated):
  init=...            the image tower: a converted ViT-B/16 (tools/convert_checkpoint.py: its
                      params are a `vit` with class token, loaded under "img"), or a bigvl
                      workdir of a `vit` B/16 classifier. Required to train (not with smoke):
                      without it, training stops at its start naming this arg.
  init_subtree=...    the subtree of init's params that is the ViT ("" for a converted ViT;
                      "img" for a two-tower checkpoint)
  batch=4096, steps=60000
  data=shards|tfds, data_dir=..., tfds=..., tokenizer=... (a sentencepiece model; "" trains one
  of 16,000 pieces, the size of the released from-scratch LiT text towers' vocabulary,
  vision_transformer's LiT-L16S/L16Ti configs), eval_dir=..., smoke

Deviations from the paper / big_vision:
  - No RandAugment: lit_coco.py trains with randaug(2, 10) after the flip; bigvl has none.
  - Image tower: bigvl converts HF ViT checkpoints; the released LiT models used big_vision's
    AugReg ViT-B/16 (ImageNet-21k). ln_eps 1e-12 matches HF's ViT (AugReg: 1e-6).
  - Text padding: big_vision's text tower reads the last position of texts padded with EOS
    ("sticky EOS"); bigvl pads with id 0 after one EOS, so the last position is usually a pad.
  - Optimizer: big_vision used plain Adam (scale_by_adam) with its own decoupled weight decay;
    bigvl's adamw multiplies the decay by the learning rate, so the same 0.01 may decay by a
    different amount per step. Precision: bfloat16 compute.
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
from bigvl.evaluators import presets as eval_presets
import ml_collections

RES = 224
TEXT_LEN = 16          # LiT's released models: texts cropped to 16 tokens (model card).
VOCAB = 16_000         # vision_transformer's from-scratch LiT text towers (L16S, L16Ti).
EMBED = 768            # The text head's width = the B/16 image tower's width.
# What init_from says when no init= was given: training then fails at its start, naming it.
INIT_MISSING = recipes.required("init", "converted ViT-B/16 checkpoint")


def pp_train() -> str:
  """lit_coco.py: resize to 224, random flip, [-1, 1] (its RandAugment left out)."""
  return (f"decode|resize({RES})|flip_lr|value_range(-1, 1)|choose_text|tokenize|"
          "keep('image', 'text')")


def pp_eval() -> str:
  return f"resize({RES})|value_range(-1, 1)"


def model() -> dict:
  """Image: a ViT-B/16 laid out as bigvl converts HF ViTModel (class token with its own
  position, patch bias, exact GELU). Text: B-sized, bidirectional, pooled at the last position,
  then a biased linear head to 768 (big_vision's text_transformer)."""
  return dict(
      name="two_towers",
      image=dict(variant="B/16", pool="cls", cls_posemb=True, act="gelu", ln_eps=1e-12),
      text=dict(variant="B", vocab_size=VOCAB, max_len=TEXT_LEN, pool="last",
                num_classes=EMBED, act="gelu", ln_eps=1e-6),
      embed_dim=None,
      temperature_init=10.0,
      bias_init=None,
  )


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, init="", init_subtree="", batch=4096, steps=60_000, data="shards",
                  data_dir="", tfds="", tokenizer="", eval_dir="", smoke=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = arg.batch
  c.total_steps = arg.steps
  c.log_every = 50
  c.eval_every = 5_000
  c.checkpoint_every = 1_000

  tfds_options = dict(text_key="captions/text") if arg.tfds == "coco_captions" else {}
  c.data = recipes.image_text_data(arg, pp=pp_train(), image_size=RES,
                                   vocab_size=VOCAB, text_len=TEXT_LEN,
                                   corpus="CC12M / YFCC100m", **tfds_options)
  c.model = model()
  c.model.update(dtype="bfloat16")
  for tower in ("image", "text"):
    c.model[tower].update(remat="full", scan_layers=True, attention_impl="auto")
  c.objective = dict(name="clip", loss_impl="xla")

  # The locked image tower: loaded from init= under "img", never updated (no optimizer state).
  c.init_from = arg.init or INIT_MISSING
  c.init_subtree = arg.init_subtree
  c.init_into = "img"
  c.optimizer = dict(name="adamw", lr=1e-3, schedule="cosine",
                     warmup_steps=max(int(0.03 * arg.steps), 100), weight_decay=0.01,
                     grad_clip=1.0, frozen_pattern="img/.*")
  c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")

  c.evals = eval_presets.image_text_evals(pp_eval(), arg.eval_dir)
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    smoke(c)
  return c


def smoke(c) -> None:
  """Tiny towers of the same structure at 32px on the stand-in data, no init: 3 CPU steps
  (the image tower stays locked at its random init)."""
  recipes.smoke(c)
  c.init_from = ""
  c.init_into = ""
  c.model.image.update(variant="mu/8", remat="none", attention_impl="xla")
  c.model.text.update(variant="mu", num_classes=32, vocab_size=64, max_len=16, remat="none",
                      attention_impl="xla")
  c.model.dtype = "float32"
  c.data.text_len = 16
  c.data.stand_in.image_size = 32
  c.data.train.image_size = 32
  c.data.train.pp = c.data.train.pp.replace(f"resize({RES})", "resize(32)")
