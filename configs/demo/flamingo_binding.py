"""Flamingo fast binding on the built-in digits: the setting, and (not yet) a model that learns it.

Every training sequence shows digit scans of 5 classes, each class named by a nonsense
word drawn for that sequence ("<image>dax<|endofchunk|><image>wug<|endofchunk|>..."): a
name is predictable only from an earlier scan of the same class in the same sequence. The
evaluation is Frozen's open-ended fast binding on the held-out scans: k examples of each of
5 freshly named classes, then a query, its name picked among the 5 by likelihood
(`eval/binding/<k>shot/top1` for k = 0, 1, 2, 4, 8; chance 0.2, and 0-shot is at chance by
construction).

Status: stage 1 learns the copy skill in part (rotary positions, sequences of 2 to 41
chunks), and stage 2 does not yet carry it over to images: the bridges stay at chance.
docs/flamingo.md has the measurements and what to try next.

    # 0. The image tower: the SigLIP digits demo.
    python -m bigvl.train --config configs/demo/siglip_digits.py --workdir workdirs/siglip_digits
    # 1. The LM, on the sequences' text, each class's pictures stood in for by a key word.
    python -m bigvl.train --config configs/demo/flamingo_binding.py:stage=lm --workdir workdirs/binding_lm
    # 2. The bridges, the image tower and the LM frozen.
    python -m bigvl.train --config configs/demo/flamingo_binding.py:stage=flamingo,lm=workdirs/binding_lm,vision=workdirs/siglip_digits --workdir workdirs/flamingo_binding

    # Between 1 and 2: does the LM copy names? (chance 0.2; stage 2 needs it high.)
    python tools/binding_lm_check.py --workdir workdirs/binding_lm

Args: `stage=lm|flamingo, lm=DIR, vision=DIR, steps=N, batch=N, episodes=N, length=N,
seed=N, gate=F` (episodes: evaluation episodes per k; length: images per stage-2 training
sequence; gate: the cross-attention gates' initial value, 0 as in the paper).
"""

from bigvl.config_lib import ConfigError, parse_arg
from bigvl.data import binding
import flamingo_digits  # The config's own directory is importable.
import ml_collections

LM_LENGTH = 41        # Chunks per LM sequence: as many as the 8-shot 5-way prompt and query.
# 41 chunks of 3 tokens (key or "<image>", name, end of chunk), EOS: the LM's text and
# Flamingo's have the same layout, each image in its key's place.
TEXT_LEN = 128


def get_config(arg=None):
  arg = parse_arg(arg, stage="flamingo", lm="", vision="", steps=0, batch=0, episodes=200,
                  length=21, seed=0, gate=0.0)
  if arg.stage not in ("lm", "flamingo"):
    raise ConfigError(f"flamingo_binding.py: stage={arg.stage!r}; valid: lm, flamingo.")
  c = ml_collections.ConfigDict()
  c.seed = arg.seed
  c.total_steps = arg.steps or (3000 if arg.stage == "lm" else 1500)
  c.batch_size = arg.batch or (64 if arg.stage == "lm" else 16)
  c.log_every = 50
  c.eval_every = 0                         # At the end.
  c.checkpoint_every = 500

  train = dict(name="binding", inner=dict(name="digits", split="train"), ways=5,
               size=100_000)
  # Keys and names are whole pieces, so that a name is one token with or without a key
  # before it ("reddax" in the LM's text, "<image>dax" in Flamingo's).
  c.data = dict(vocab_size=64, special_tokens=("<image>", "<|endofchunk|>", *binding.KEYS,
                                               *binding.NAMES), text_len=TEXT_LEN)
  c.optimizer = dict(lr=3e-3 if arg.stage == "lm" else 1e-3, warmup_steps=100,
                     weight_decay=1e-4, schedule="cosine")
  lm = flamingo_digits.lm_options()
  lm["max_len"] = TEXT_LEN
  # Rotary positions: the copy skill found on short sequences holds at every position.
  lm["position"] = "rope"

  if arg.stage == "lm":
    # The text alone, each way's chunks keyed by a colour word in place of its pictures,
    # sequences of 2 to 41 chunks (the copy skill forms on the short ones).
    c.data.train = dict(train, length=LM_LENGTH, keys=True, min_length=2,
                        pp="interleave_text(image='')|tokenize|keep('text')")
    c.model = dict(name="lm", **lm)
    c.objective = dict(name="lm")
    return c

  if not arg.lm or not arg.vision:
    raise ConfigError("flamingo_binding.py:stage=flamingo needs lm=<stage-1 workdir> and "
                      "vision=<SigLIP digits demo workdir>.")
  base = flamingo_digits.get_config(f"lm={arg.lm},vision={arg.vision}")
  c.data.tokenizer = f"{arg.lm}/tokenizer.model"
  # Shorter sequences than the LM's (the cost is the images): the 4-shot prompt and query.
  c.data.train = dict(train, length=arg.length, prompt=binding.PROMPT,
                      pp=f"each_image('{flamingo_digits.IMAGE_PP}')|interleave_text|"
                         "tokenize|keep('images', 'text')")
  c.model = base.model
  c.model.lm = lm
  # gate=1 opens the gates from the start: a name is found by matching two images' features
  # inside the frozen LM's attention, a product of two bridge outputs, whose gradient
  # vanishes at the paper's closed gates. It did not help here either (docs/flamingo.md).
  c.model.xattn.gate_init = arg.gate
  c.init_from, c.init_into, c.init_also = base.init_from, base.init_into, base.init_also
  c.objective = dict(name="flamingo")      # Freezes vision/ and lm/.
  c.evals = dict(
      binding=dict(name="binding", data=dict(name="digits", split="test",
                                             pp=flamingo_digits.IMAGE_PP),
                   ways=5, shots=(0, 1, 2, 4, 8), episodes=arg.episodes, text_len=TEXT_LEN,
                   prompt=binding.PROMPT),
  )
  return c
