"""Flamingo with a converted GPT-2 LM and a converted SigLIP image tower, both frozen, bridged
by a Perceiver resampler and gated cross-attention (Alayrac et al. 2022, "Flamingo: a Visual
Language Model for Few-Shot Learning"; the open recipe of Awadalla et al. 2023, "OpenFlamingo:
An Open-Source Framework for Training Large Autoregressive Vision-Language Models").

Reproduces: no paper number. This is a recipe at a size that trains on one host of 8
accelerators, shaped like OpenFlamingo-3B (github.com/mlfoundations/open_flamingo: a 1B-class
LM, a gated cross-attention layer before every LM block (--cross_attn_every_n_layers 1), a
6-layer resampler with 64 latents), but with other towers (GPT-2, SigLIP) and other data, so
OpenFlamingo's numbers (e.g. its README's COCO 4-shot CIDEr 77.3 for OpenFlamingo-3B) are not
what it would reach.

Model (defaults): GPT-2 large (774M: width 1280, 36 blocks, 20 heads, vocabulary 50,257, tied
head) frozen; SigLIP So400m/14 at 224px (its 256 patch tokens, MAP head dropped) frozen;
trained: a Perceiver resampler (6 layers, 64 latents, at the image tower's width 1152) and 36
gated cross-attention dense layers (one before every LM block). 1.98B parameters, of which
792M train (resampler 95.7M, cross-attention 696.6M); tests/test_configs_ssl.py counts them.
OpenFlamingo-like optimizer (open_flamingo/train/train.py defaults and its README's
OpenFlamingo-3B command): AdamW lr 1e-4, weight decay 0.1, 1,875 warm-up steps, then
constant, gradient norm clipped at 1.0. Sequences: 5 image-caption pairs per sequence, 256
tokens. Steps: 60M sequences seen (480 epochs of 125,000 MMC4 sequences, as the README's
OpenFlamingo-3B command) at batch 256 = 234,375 steps.

    # 0. Convert the towers (HF directories as save_pretrained wrote them).
    python tools/convert_checkpoint.py hf path/to/gpt2-large converted/gpt2-large
    python tools/convert_checkpoint.py hf path/to/siglip-so400m-patch14-224 converted/so400m
    # 1. Train the bridges.
    python -m bigvl.train \
        --config configs/flamingo/gpt2.py:lm=converted/gpt2-large,vision=converted/so400m,tokenizer=gpt2_ids.model,data_dir=gs://bucket/pairs \
        --workdir gs://bucket/flamingo_gpt2
    python -m bigvl.plan --config configs/flamingo/gpt2.py --topology h100x8

Data: bigvl shards of image-text pairs (tools/make_dataset.py, e.g. from img2dataset output of
LAION or CC12M; `data_dir=` required), packed k at a time into interleaved sequences by
bigvl's `interleaved` source ("<image>caption<|endofchunk|>" x k); or a TFDS image-caption set
(`data=tfds,tfds=coco_captions`, its captions under `captions/text`).

Required to train: `lm=` (a GPT-2 converted by tools/convert_checkpoint.py; the size in
`size=` must be its size), `vision=` (a converted SigLIP So400m/14 224px, or the tower named
by `vision_variant=`), and `tokenizer=`: a sentencepiece model with GPT-2's ids whose
"<image>" and "<|endofchunk|>" are single pieces with ids below 50,257 (bigvl does not ship
one; docs/flamingo.md). Without them the config still builds (the planner and tests read
no checkpoint or tokenizer) but training stops at its start naming the missing arg.

Arg language (all optional, comma-separated):
  lm=DIR, vision=DIR, tokenizer=FILE    see above
  size=large          GPT-2 size of the converted LM: small | medium | large | xl
  vision_variant=So400m/14   the SigLIP image tower: So400m/14 | B/16 | L/16
  res=224             image size (the converted SigLIP's)
  cross_every=1       a gated cross-attention layer before every N-th LM block (OpenFlamingo
                      3B: 1, 4B: 2, 9B: 4)
  k=5                 image-caption pairs per sequence
  text_len=256        tokens per sequence
  batch=256           global batch of sequences
  samples=60e6        sequences seen; total_steps = samples / batch
  data=shards | tfds, data_dir=..., tfds=...   the image-text source
  smoke               tiny random towers (no init), 3 steps of batch 8 on synthetic data (CPU)

Deviations from the papers (bigvl lacks these):
  - The interleaved sequences pack k unrelated image-caption pairs; Flamingo trains on real
    interleaved web pages (M3W; OpenFlamingo: MMC4) mixed with pairs (LAION-2B).
  - OpenFlamingo trains the LM's input embeddings of its two new tokens; here the markers must
    be existing GPT-2 ids (the tokenizer above) and the whole LM stays frozen.
  - The `flamingo` objective uses bigvl's tokenizer conventions (pad id 0, EOS id 2), which
    are real GPT-2 tokens ("!" and "#"): a GPT-2-id tokenizer must map its padding and EOS to
    them, or the objective needs GPT-2's ids (50256) as options, which it does not have yet.
  - No remat inside the LM (bigvl's CausalLM has no remat option); the image tower is
    rematerialised.
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
from bigvl.models import presets
import ml_collections

# GPT-2 sizes (HF GPT2Config of gpt2 / gpt2-medium / gpt2-large / gpt2-xl): width, depth, heads.
GPT2 = {"small": (768, 12, 12), "medium": (1024, 24, 16), "large": (1280, 36, 20),
        "xl": (1600, 48, 25)}
GPT2_VOCAB = 50_257
GPT2_POSITIONS = 1024
VISION = ("So400m/14", "B/16", "L/16")


def missing(arg: str, what: str) -> str:
  """What a required path is without its arg: the run fails at its start naming the arg."""
  return recipes.required(arg, what)


def lm(size: str) -> dict:
  """The `lm` options tools/convert_checkpoint.py writes for HF GPT-2 of that size."""
  width, depth, heads = GPT2[size]
  return dict(vocab_size=GPT2_VOCAB, width=width, depth=depth, mlp_dim=4 * width,
              num_heads=heads, max_len=GPT2_POSITIONS, act="gelu_tanh", ln_eps=1e-5,
              tie_embeddings=True)


def vision(variant: str) -> dict:
  """SigLIP's image tower (presets.siglip) without its MAP head: every patch token."""
  tower = dict(presets.siglip(variant)["image"])
  tower.pop("pool")
  return dict(tower, remat="full", scan_layers=True, attention_impl="auto")


def get_config(arg=None):
  arg = parse_arg(arg, lm="", vision="", tokenizer="", size="large",
                  vision_variant="So400m/14", res=224, cross_every=1, k=5, text_len=256,
                  batch=256, samples=60e6, data="shards", data_dir="", tfds="", smoke=False)
  if arg.size not in GPT2:
    raise recipes.ConfigError(f"Config arg size={arg.size!r}; valid: {', '.join(GPT2)}.")
  if arg.vision_variant not in VISION:
    raise recipes.ConfigError(f"Config arg vision_variant={arg.vision_variant!r}; valid: "
                              f"{', '.join(VISION)}.")
  if arg.data == "tfds" and not arg.tfds:
    raise recipes.ConfigError("data=tfds needs tfds=<an image-caption TFDS set, e.g. "
                              "coco_captions>.")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = arg.batch
  # 32 sequences per H100 need ~140 GiB of activations (python -m bigvl.plan: the frozen LM
  # is not rematerialised): four micro-batches of 8 per device.
  c.grad_accum_steps = 4
  c.total_steps = max(int(arg.samples) // arg.batch, 1)
  c.log_every = 100
  c.eval_every = 0
  c.checkpoint_every = 2_000
  c.evals = {}

  image_pp = f"decode|resize({arg.res})|value_range(-1, 1)"
  pp = (f"each_image('{image_pp}')|interleave_text|tokenize|keep('images', 'text')")
  tfds_opts = dict(text_key="captions/text") if arg.tfds == "coco_captions" else {}
  inner = recipes.source(arg, tfds=arg.tfds, split="train", **tfds_opts)
  c.data = dict(
      train=dict(name="interleaved", inner=inner, k=arg.k, pp=pp),
      stand_in=dict(name="interleaved", k=arg.k, size=256,
                    inner=recipes.stand_in(image_size=arg.res)),
      tokenizer=arg.tokenizer or missing("tokenizer", "sentencepiece model with GPT-2 ids"),
      special_tokens=("<image>", "<|endofchunk|>"),
      text_len=arg.text_len,
      workers=16,
  )
  c.model = dict(
      name="flamingo",
      vision=vision(arg.vision_variant),
      lm=lm(arg.size),
      # OpenFlamingo's PerceiverResampler: depth 6, 64 latents, MLP 4x (at the tower's width).
      resampler=dict(depth=6, num_latents=64, num_heads=16),
      # GatedCrossAttentionDense: GPT-2's head count, MLP 4x the LM width.
      xattn=dict(num_heads=GPT2[arg.size][2]),
      cross_every=arg.cross_every,
      media_mode="last",                 # Text sees only its most recent image (the paper's).
      image_token_id=None,               # The tokenizer's "<image>" (filled by the loop).
      dtype="bfloat16",
  )
  c.init_from = arg.lm or missing("lm", "converted GPT-2 directory")
  c.init_into = "lm"
  c.init_also = (dict(init_from=arg.vision or missing("vision", "converted SigLIP directory"),
                      init_subtree="img", init_into="vision"),)
  c.objective = dict(name="flamingo")     # Freezes vision/ and lm/.
  c.optimizer = dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1,
                     warmup_steps=1875, schedule="constant", grad_clip=1.0)
  # 1.19B frozen + 0.79B trained: the state sharded over the host's devices.
  c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    smoke(c)
  return c


def smoke(c) -> None:
  """Random tiny towers of the same structure (no init), 32px images, 3 CPU steps."""
  recipes.smoke(c)
  c.init_from = ""
  c.init_into = ""
  c.init_also = ()
  c.model.vision.update(variant="mu/8", remat="none", scan_layers=False, attention_impl="xla")
  c.model.lm.update(vocab_size=None, width=32, depth=2, mlp_dim=64, num_heads=2, max_len=64)
  c.model.resampler.update(depth=1, num_latents=4, num_heads=2)
  c.model.xattn.update(num_heads=2)
  c.model.dtype = "float32"
  c.data.text_len = 64
  c.data.train.k = 2
  c.data.stand_in.k = 2
  c.data.train.inner.image_size = 32
  c.data.train.pp = ("each_image('decode|resize(32)|value_range(-1, 1)')|interleave_text|"
                     "tokenize|keep('images', 'text')")
