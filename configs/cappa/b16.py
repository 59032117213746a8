"""CapPa B/16 (Tschannen et al. 2023, "Image Captioners Are Scalable Vision Learners Too",
NeurIPS 2023, arXiv 2306.07915).

Reproduces: the paper's CapPa ViT-B/16 encoder-decoder captioner: a B/16 image encoder
(width 768, 12 layers, MLP 3072, 12 heads) whose 196 tokens feed a 6-layer Transformer
decoder of the same width; 75% of the batches use parallel prediction (every decoder input
masked, no causal mask), the rest autoregressive teacher forcing. This header quotes no
accuracy: none could be checked here against a stored copy of the paper's tables.
Training (the authors' reference config, big_vision/configs/proj/cappa/pretrain.py, and
the paper): WebLI image/alt-text pairs, 224px images, 64-token captions with the c4_en
sentencepiece (32k), batch 8,192, big_vision's Adafactor variant (momentum 0.9, b2 capped at
0.999), lr 1e-3 with 10k warmup steps and cosine decay, weight decay 1e-4 (big_vision's
decoupled form), gradient clipping at norm 1. Examples seen: 9B by default (samples=9e9,
1,098,632 steps at 8k), taken as the paper's main-run budget from issue 21's brief; it
was not checked here against the paper's text. big_vision's reference config defaults to
366,500 steps at 8k = 3.0B examples: set samples=3e9 for that. Paper hardware: TPUv4 (the
paper's Table 1 gives TPUv4-hours per billion examples seen).

    python -m bigvl.train --config configs/cappa/b16.py:data_dir=gs://b/pairs,tokenizer=gs://b/c4_en.model \\
        --workdir gs://b/cappa_b16 --distributed
    python -m bigvl.plan --config configs/cappa/b16.py --topology v4-128

(The planner, 2026-12-06: fits, 7.8 GiB of 32 per device; 2.1 days at 40% MFU.)

Data: bigvl shards of image-text pairs (tools/make_dataset.py from img2dataset output;
`data_dir=` required; data=tfds,tfds=<name> reads a TFDS image-caption set instead), a 32k
sentencepiece model (`tokenizer=`, e.g. big_vision's c4_en; "" trains one on the captions),
and, for the evals, TFDS imagenet2012 and coco_captions under `eval_dir=`: ImageNet zero-shot
by caption scoring of the bare class names (as big_vision's reference config scores them),
COCO caption perplexity on the Karpathy val split, greedy COCO captions on the test split.

Arg language (all optional, comma-separated): res=224, batch=8192, samples=9e9
(total_steps = samples / batch), parallel=0.75, data=shards|tfds, data_dir=, tfds=,
tokenizer=, eval_dir=, smoke (tiny towers, 3 CPU steps on synthetic data).

Deviations from the paper:
- Optimizer: AdamW (b1 0.9, b2 0.999) instead of big_vision's Adafactor variant. Weight
  decay 0.1 here = the paper's 1e-4: optax scales the decay by the learning rate (peak 1e-3),
  big_vision by the schedule's multiplier only.
- Parallel prediction is drawn per batch (75% of the steps) by bigvl's `cappa` objective;
  big_vision draws it per example (75% of each batch's examples).
- Decoder layout: bigvl's decoder has biases in its attention, MLP and LayerNorms and a
  learned mask embedding, and a linear projection (mem_proj) of the image tokens before
  cross-attention; big_vision's CapPa decoder has no attention biases, no MLP/LayerNorm
  biases (decoder_bias=False), a mask token as an extra vocabulary row and no projection.
- The text decoder is rematerialised but not scanned (bigvl's TextDecoder has no scan).
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
from bigvl.evaluators import presets as eval_presets
import ml_collections

VOCAB = 32_000         # big_vision's c4_en sentencepiece (the reference config's).
TEXT_LEN = 64          # The reference config's max_text_tokens.
DECODER_LAYERS = 6     # The reference config's decoder_num_layers (width/MLP/heads: encoder's).


def pp_train(res: int) -> str:
  """The whole image resized to res x res, as big_vision's CapPa config trains."""
  return recipes.pp_resized_caption(res)


def pp_eval(res: int) -> str:
  return recipes.pp_resized(res)


def model() -> dict:
  return dict(
      name="captioner",
      image=dict(variant="B/16", posemb="learn"),   # All 196 tokens feed the decoder.
      decoder=dict(width=768, depth=DECODER_LAYERS, mlp_dim=3072, num_heads=12,
                   vocab_size=VOCAB, max_len=TEXT_LEN),
      dtype="bfloat16",
  )


def get_config(arg=None):
  arg = parse_arg(arg, res=224, batch=8192, samples=9e9, parallel=0.75, data="shards",
                  data_dir="", tfds="", tokenizer="", eval_dir="", smoke=False)
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
  c.model = model()
  c.model.image.update(remat="full", scan_layers=True, attention_impl="auto")
  c.model.decoder.update(remat="full", attention_impl="auto")
  c.objective = dict(name="cappa", parallel_fraction=arg.parallel)
  c.optimizer = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.999,
                     weight_decay=0.1,  # x lr 1e-3 = big_vision's decoupled 1e-4.
                     warmup_steps=10_000, schedule="cosine", min_lr_ratio=0.0, grad_clip=1.0)
  # 0.2B parameters: the state sharded over every device (FSDP).
  c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")

  c.evals = {}
  if arg.eval_dir:
    pp = pp_eval(arg.res)
    coco_test = eval_presets.coco_retrieval(pp, data_dir=arg.eval_dir)["data"]
    coco_val = dict(coco_test, split="val", pp=pp + "|choose_text|tokenize")
    imagenet = eval_presets.imagenet_zeroshot(pp, data_dir=arg.eval_dir)["data"]
    c.evals = dict(
        # Each of the 1,000 class names scored by its caption likelihood (1,000 decoder
        # passes per image batch: slow, hence every 50k steps).
        imagenet_scoring=dict(name="scoring_zeroshot", data=imagenet,
                              class_names="imagenet",
                              templates=["{}"], every=50_000),
        coco_perplexity=dict(name="perplexity", data=coco_val),
        coco_captions=dict(name="captioning", data=coco_test, decode="greedy"),
    )
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    smoke(c)
  return c


def smoke(c) -> None:
  """Tiny towers of the same structure at 32px, on the stand-in data: 3 CPU steps."""
  recipes.smoke(c)
  c.model.image.update(variant="mu/8", remat="none", scan_layers=False, attention_impl="xla")
  c.model.decoder.update(width=32, depth=1, mlp_dim=64, num_heads=2, vocab_size=64,
                         max_len=16, attention_impl="xla", remat="none")
  c.model.dtype = "float32"
  c.data.text_len = 16
  c.data.stand_in.image_size = 32
  c.data.train.image_size = 32
