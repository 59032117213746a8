"""What every CLIP config shares: open_clip's LAION-2B recipe (Cherti et al. 2023,
"Reproducible scaling laws for contrastive language-image learning"; the runs behind open_clip's
`laion2b_s34b_b79k`, `laion2b_s34b_b88k` and `laion2b_s32b_b82k` weights), the softmax CLIP
loss, 224px images and 77-token texts, and the ImageNet/COCO evals.

The setting files beside this one (b32.py, b16.py, l14.py) fix a variant and document the
number it reproduces; fork one of them, or call `get_config` here with another variant.

Where the numbers come from. Per run, LAION-AI/scaling-laws-openclip's trained_models_info.csv
(the table of the paper's runs in its repository) gives the peak lr, warmup steps, epochs of
its "virtual" epoch size, GPUs and per-GPU batch: the global batch is GPUs x per-GPU batch, the
samples seen epochs x epoch size. Everything else is open_clip's training default for ViTs,
which that table does not record as changed (src/open_clip_train/params.py: AdamW, beta1 0.9,
beta2 0.98, eps 1e-6, weight decay 0.2, cosine schedule after the linear warmup, no gradient
clipping; training transform RandomResizedCrop(scale=(0.9, 1.0)), src/open_clip/transform.py).
open_clip decays every parameter of two or more dimensions (weights, token and position
embeddings, projections), not biases, norms, the class token or the logit scale: `wd_pattern`
below names the same set in bigvl's tree (tests/test_configs_clip.py counts it).

Arg language of every setting file (all optional, comma-separated):
  batch=...           global batch (default: the run's, e.g. 79104 for B/32)
  samples=...         examples seen; total_steps = samples // batch (default: the run's)
  data=shards         shards (bigvl shards of image-text pairs: tools/make_dataset.py from
                      img2dataset's LAION-2B-en output) | tfds
  data_dir=...        the shards' --out (required with data=shards), or TFDS's data_dir
  tfds=...            TFDS dataset name with data=tfds (its `texts` come from text_key)
  tokenizer=...       a sentencepiece model whose EOS id is 2 (as bigvl trains them) and whose
                      vocabulary fits 49,408 ids; "" trains one (49,408 pieces) on the captions
  eval_dir=...        TFDS data_dir of the evals (imagenet2012, coco_captions); "" no evals
  smoke               tiny towers, 3 steps of batch 8 on synthetic data (tests, CPU)

Deviations from open_clip (all runs):
  - Tokenizer: a sentencepiece model (bigvl has no CLIP BPE); the text tower keeps CLIP's
    49,408-row embedding and is pooled at the first EOS (id 2) instead of at the highest id.
  - The logit scale is learned from 1/0.07 without open_clip's clamp at 100.
  - Precision: bfloat16 compute; open_clip trained with fp16 AMP, and the L/14 run partly in
    float32 (its model card).
  - Augmentation: open_clip's RandomResizedCrop(scale=(0.9, 1.0)) is bicubic; inception_crop
    is bilinear. Its eval resize is bicubic too (resize_small is bilinear).
  - The softmax loss is the dense XLA one over the global batch: bigvl has no chunked softmax
    loss yet (open_clip's --local-loss --gather-with-grad computes each device's rows against
    all texts); XLA partitions the logits over the batch-sharded devices.
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
from bigvl.evaluators import presets as eval_presets
from bigvl.models import presets
import ml_collections

RES = 224
TEXT_LEN = 77          # CLIP's context length.
VOCAB = 49_408         # CLIP's BPE vocabulary: the text tower's embedding rows.
EOS_ID = 2             # EOS of a sentencepiece model bigvl trains (pad 0, unk 1, eos 2).

# Per variant: the LAION-2B run (scaling-laws-openclip trained_models_info.csv row) whose
# recipe the setting reproduces, and the image normalisation its released weights use.
RUNS = {
    # ViT-B/32 laion2b_s34b_b79k: 824 GPUs x 96 = 79,104; 256 epochs of 135,646,078.
    "B/32": dict(batch=79_104, samples=256 * 135_646_078, lr=1e-3, warmup=2_000, norm="clip"),
    # ViT-B/16 laion2b_s34b_b88k: 344 GPUs x 256 = 88,064; 171 epochs of 200,092,953.
    "B/16": dict(batch=88_064, samples=171 * 200_092_953, lr=1e-3, warmup=10_000, norm="clip"),
    # ViT-L/14 laion2b_s32b_b82k: 384 GPUs x 224 = 86,016 (the card: 79,872 = 384 x 208 for
    # the first 68 of 160 epochs, 86,016 after); 160 epochs of 200,000,000. Its weights use
    # mean = std = 0.5 ("inception") normalisation (open_clip docs/PRETRAINED.md).
    "L/14": dict(batch=86_016, samples=160 * 200_000_000, lr=1e-3, warmup=10_000, norm="half"),
}

# open_clip's weight-decay set (ndim >= 2) in bigvl's names: kernels (dense, attention and the
# patch convolution), the learned position embeddings and the token embedding.
WD_PATTERN = r".*/kernel$|.*pos_embedding$|.*/token_embedding/embedding$"


def _normalize(norm: str) -> str:
  return "normalize('clip')" if norm == "clip" else "value_range(-1, 1)"


def pp_train(norm: str) -> str:
  """open_clip's training transform: RandomResizedCrop(224, scale=(0.9, 1.0)), normalise."""
  return (f"inception_crop({RES}, scale=(0.9, 1.0))|{_normalize(norm)}|choose_text|tokenize|"
          "keep('image', 'text')")


def pp_eval(norm: str) -> str:
  """open_clip's eval transform: shorter side to 224, centre crop 224, normalise."""
  return f"resize_small({RES})|central_crop({RES})|{_normalize(norm)}"


def arg_defaults(variant: str) -> dict:
  run = RUNS[variant]
  return dict(batch=run["batch"], samples=float(run["samples"]), data="shards", data_dir="",
              tfds="", tokenizer="", eval_dir="", smoke=False)


def model(variant: str) -> dict:
  """open_clip's ViT-<size>-<patch> (LAION weights: exact GELU, not QuickGELU) with the text
  tower pooled at the sentencepiece EOS."""
  m = presets.clip(variant)
  m["image"]["act"] = m["text"]["act"] = "gelu"
  m["text"].update(pool="eos", eos_id=EOS_ID)
  return m


def get_config(variant: str, arg=None) -> ml_collections.ConfigDict:
  """CLIP `variant` ("B/32", "B/16", "L/14") with open_clip's LAION-2B recipe for it."""
  if variant not in RUNS:
    raise recipes.ConfigError(f"No LAION-2B CLIP run for {variant!r}; valid: {', '.join(RUNS)}.")
  run = RUNS[variant]
  arg = parse_arg(arg, **arg_defaults(variant))
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = arg.batch
  c.total_steps = max(int(arg.samples) // arg.batch, 1)
  c.log_every = 100
  c.eval_every = 10_000
  c.checkpoint_every = 2_000
  c.keep_every = 50_000

  c.data = recipes.image_text_data(arg, pp=pp_train(run["norm"]), image_size=RES,
                                   vocab_size=VOCAB, text_len=TEXT_LEN,
                                   corpus="LAION-2B")
  c.model = model(variant)
  c.model.update(dtype="bfloat16")
  for tower in ("image", "text"):
    c.model[tower].update(remat="full", scan_layers=True, attention_impl="auto")
  # Dense softmax loss over the global batch (there is no chunked softmax loss in bigvl yet).
  c.objective = dict(name="clip", loss_impl="xla")
  c.optimizer = dict(name="adamw", lr=run["lr"], warmup_steps=run["warmup"], schedule="cosine",
                     b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2, wd_pattern=WD_PATTERN,
                     grad_clip=0.0)
  # The state sharded over every device (FSDP): the batch still splits over all of them.
  c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")

  c.evals = eval_presets.image_text_evals(pp_eval(run["norm"]), arg.eval_dir)
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    smoke(c)
  return c


def smoke(c) -> None:
  """Tiny towers of the same structure at 32px, on the stand-in data: 3 CPU steps."""
  recipes.smoke(c)
  c.model.image.update(variant="mu/8", remat="none", attention_impl="xla")
  c.model.text.update(width=32, depth=1, mlp_dim=64, num_heads=2, vocab_size=64, max_len=16,
                      remat="none", attention_impl="xla")
  c.model.embed_dim = 32
  c.model.dtype = "float32"
  c.data.text_len = 16
  c.data.stand_in.image_size = 32
  c.data.train.image_size = 32
  c.data.train.pp = c.data.train.pp.replace(f"inception_crop({RES},", "inception_crop(32,")
