"""Flamingo on the built-in digits: a frozen image tower and a frozen LM, bridged by a
Perceiver resampler and gated cross-attention, then prompted with in-context examples.

Three runs (their wall times and results: docs/flamingo.md):

    # 0. The image tower: the SigLIP demo (or any two-tower run with the same tiny ViT).
    python -m bigvl.train --config configs/demo/siglip_digits.py --workdir workdirs/siglip_digits
    # 1. A small LM on interleaved caption text ("<image>a photo of the digit seven.<|endofchunk|>...").
    python -m bigvl.train --config configs/demo/flamingo_digits.py:stage=lm --workdir workdirs/digits_lm
    # 2. The bridges, with the image tower and the LM frozen.
    python -m bigvl.train --config configs/demo/flamingo_digits.py:stage=flamingo,lm=workdirs/digits_lm,vision=workdirs/siglip_digits --workdir workdirs/flamingo_digits

Stage 2 evaluates k-shot classification of the held-out digits from prompts like
"<image>a photo of the digit seven.<|endofchunk|> x4, then <image>a photo of the digit {c}."
(each class c scored by the likelihood of the query's chunk): `eval/in_context/4shot/top1`
beside `0shot/top1`. Args: `stage=lm|flamingo, lm=DIR, vision=DIR, steps=N, batch=N, k=N`
(k: examples per training sequence).
"""

from bigvl.config_lib import ConfigError, parse_arg
import ml_collections

IMAGE_PP = "resize(16)|value_range(-1, 1)"


def lm_options(**kw):
  # vocab_size: the tokenizer's (filled by the loop).
  return dict(vocab_size=None, width=64, depth=2, mlp_dim=256, num_heads=4, max_len=48, **kw)


def get_config(arg=None):
  arg = parse_arg(arg, stage="flamingo", lm="", vision="", steps=0, batch=32, k=5)
  if arg.stage not in ("lm", "flamingo"):
    raise ConfigError(f"flamingo_digits.py: stage={arg.stage!r}; valid: lm, flamingo.")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps or (800 if arg.stage == "lm" else 1000)
  c.batch_size = arg.batch
  c.log_every = 100
  c.eval_every = 0 if arg.stage == "lm" else 500
  c.checkpoint_every = 500

  inner = dict(name="digits", split="train")
  # Many more records than digits // k: each record is its own random draw of k digits.
  train = dict(name="interleaved", inner=inner, k=arg.k, size=50_000)
  c.data = dict(
      vocab_size=128,                      # Class names stay single pieces.
      special_tokens=("<image>", "<|endofchunk|>"),
      text_len=48,
  )
  c.optimizer = dict(lr=1e-3, warmup_steps=100, weight_decay=1e-4, schedule="cosine")

  if arg.stage == "lm":
    c.data.train = dict(train, pp="interleave_text|tokenize|keep('text')")
    c.model = dict(name="lm", **lm_options())
    c.objective = dict(name="lm")
    return c

  if not arg.lm or not arg.vision:
    raise ConfigError("flamingo_digits.py:stage=flamingo needs lm=<stage-1 workdir> and "
                      "vision=<SigLIP demo workdir>.")
  c.data.tokenizer = f"{arg.lm}/tokenizer.model"
  c.data.train = dict(train, pp=f"each_image('{IMAGE_PP}')|interleave_text|tokenize|"
                                "keep('images', 'text')")
  c.model = dict(
      name="flamingo",
      # The SigLIP demo's image tower (pool none: the resampler reads every patch token).
      vision=dict(width=64, depth=2, mlp_dim=256, num_heads=4, patch_size=4, posemb="learn"),
      lm=lm_options(),
      resampler=dict(depth=1, num_latents=8, num_heads=4, mlp_dim=256),
      xattn=dict(num_heads=4, mlp_dim=256),
      cross_every=1,
      media_mode="last",
      image_token_id=None,                 # The tokenizer's "<image>" (filled by the loop).
  )
  c.init_from = arg.lm
  c.init_into = "lm"
  c.init_also = (dict(init_from=arg.vision, init_subtree="img", init_into="vision"),)
  c.objective = dict(name="flamingo")      # Freezes vision/ and lm/ by default.
  c.evals = dict(
      in_context=dict(name="in_context", data=dict(name="digits", split="test", pp=IMAGE_PP),
                      support_split="train", shots=(0, 4), prompt="a photo of the digit {}.",
                      text_len=48),
  )
  return c
